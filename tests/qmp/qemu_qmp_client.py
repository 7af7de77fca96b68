#!/usr/bin/env python3
"""Drives `ferrovisor run --qmp` with QEMU's own Python client, `qemu.qmp` from PyPI, unchanged.

usage: qemu_qmp_client.py SOCKET SNAPSHOT_DIR
Exits 0 when every check holds; prints what failed otherwise.
"""
import asyncio
import os
import sys

from qemu.qmp import ExecuteError, QMPClient
from qemu.qmp.legacy import QEMUMonitorProtocol

TIMEOUT = 20


async def next_event(listener, name=None):
    while True:
        ev = await asyncio.wait_for(listener.get(), TIMEOUT)
        if name is None or ev['event'] == name:
            return ev


async def job(client, command, args):
    """Runs a snapshot job; returns (statuses seen, query-jobs entry)."""
    statuses = []
    with client.listener('JOB_STATUS_CHANGE') as l:
        assert await client.execute(command, args) == {}
        while True:
            ev = await next_event(l)
            assert ev['data']['id'] == args['job-id'], ev
            statuses.append(ev['data']['status'])
            if statuses[-1] == 'concluded':
                break
    jobs = await client.execute('query-jobs')
    entry = [j for j in jobs if j['id'] == args['job-id']]
    assert len(entry) == 1, jobs
    assert entry[0]['type'] == command, entry
    with client.listener('JOB_STATUS_CHANGE') as l:
        await client.execute('job-dismiss', {'id': args['job-id']})
        ev = await next_event(l)
        assert ev['data']['status'] == 'null', ev
    return statuses, entry[0]


def legacy_check(sock):
    legacy = QEMUMonitorProtocol(sock)
    greeting = legacy.connect()
    assert 'QMP' in greeting, greeting
    assert legacy.cmd('query-status')['status'] == 'running'
    legacy.close()


async def main(sock, snapdir):
    a = QMPClient('a')
    b = QMPClient('b')
    await a.connect(sock)
    await b.connect(sock)  # several clients at once
    qmp = a.greeting.QMP
    assert qmp.version['qemu']['major'] == 7, qmp

    st = await a.execute('query-status')
    assert st['status'] == 'running' and st['running'] is True, st
    assert await a.execute('query-name') == {'name': 'qmp-test'}
    v = await b.execute('query-version')
    assert 'qemu' in v and 'package' in v, v
    cpus = await a.execute('query-cpus-fast')
    assert cpus[0]['cpu-index'] == 0 and cpus[0]['target'] == 'x86_64', cpus
    blk = await a.execute('query-block')
    assert blk[0]['inserted']['image']['format'] == 'vmdk', blk
    assert blk[0]['inserted']['image']['virtual-size'] == 8 << 20, blk

    # stop / cont, with the events seen by the *other* client.
    with b.listener(('STOP', 'RESUME')) as l:
        assert await a.execute('stop') == {}
        ev = await next_event(l)
        assert ev['event'] == 'STOP', ev
        ts = ev['timestamp']
        assert ts['seconds'] > 1_600_000_000 and 0 <= ts['microseconds'] < 1_000_000, ev
        st = await b.execute('query-status')
        assert st == {'status': 'paused', 'running': False, 'singlestep': False}, st
        out = await a.execute('human-monitor-command', {'command-line': 'info status'})
        assert out == 'VM status: paused\r\n', repr(out)
        assert await a.execute('cont') == {}
        ev = await next_event(l)
        assert ev['event'] == 'RESUME', ev
    out = await a.execute('human-monitor-command', {'command-line': 'info status'})
    assert out == 'VM status: running\r\n', repr(out)

    # QMP's error form.
    for cmd, args, cls, desc in [
        ('no-such-command', None, 'CommandNotFound', 'The command no-such-command has not been found'),
        ('stop', {'bogus': 1}, 'GenericError', "Parameter 'bogus' is unexpected"),
        ('snapshot-save', {'job-id': 'x'}, 'GenericError', "Parameter 'tag' is missing"),
        ('job-dismiss', {'id': 5}, 'GenericError', "Invalid parameter type for 'id', expected: string"),
    ]:
        try:
            await a.execute(cmd, args)
        except ExecuteError as e:
            assert e.error_class == cls, (cmd, e.error_class)
            assert desc in str(e), (cmd, str(e))
        else:
            raise AssertionError(f'{cmd} {args} succeeded')

    # Snapshots as jobs.
    statuses, entry = await job(a, 'snapshot-save',
                                {'job-id': 'save0', 'tag': 'snap0', 'vmstate': 'disk0', 'devices': ['disk0']})
    assert statuses == ['created', 'running', 'waiting', 'pending', 'concluded'], statuses
    assert 'error' not in entry, entry
    assert os.path.exists(os.path.join(snapdir, 'snap0.fvsnap'))
    # The VM went on with a delta of its disk (VMware's model).
    blk = await a.execute('query-block')
    assert blk[0]['inserted']['file'].endswith('disk.snap0.vmdk'), blk
    _, entry = await job(b, 'snapshot-load',
                         {'job-id': 'load0', 'tag': 'snap0', 'vmstate': 'disk0', 'devices': ['disk0']})
    assert 'error' not in entry, entry
    _, entry = await job(a, 'snapshot-load',
                         {'job-id': 'load1', 'tag': 'missing', 'vmstate': 'disk0', 'devices': []})
    assert 'error' in entry, entry
    _, entry = await job(a, 'snapshot-delete', {'job-id': 'del0', 'tag': 'snap0', 'devices': ['disk0']})
    assert 'error' not in entry, entry
    assert not os.path.exists(os.path.join(snapdir, 'snap0.fvsnap'))

    with b.listener('RESET') as l:
        assert await a.execute('system_reset') == {}
        ev = await next_event(l)
        assert ev['data'] == {'guest': False, 'reason': 'host-qmp-system-reset'}, ev
    with b.listener('POWERDOWN') as l:
        assert await a.execute('system_powerdown') == {}
        await next_event(l)

    # The synchronous (legacy) API too (it runs its own event loop: on a thread).
    await asyncio.to_thread(legacy_check, sock)

    with b.listener('SHUTDOWN') as l:
        assert await a.execute('quit') == {}
        ev = await next_event(l)
        assert ev['data'] == {'guest': False, 'reason': 'host-qmp-quit'}, ev
    # After `quit` the server closes every connection (as QEMU does): a client whose reader saw
    # that EOF first reports it from disconnect().
    for c in (a, b):
        try:
            await c.disconnect()
        except EOFError:
            pass
    print('qemu.qmp: all checks passed')


if __name__ == '__main__':
    asyncio.run(main(sys.argv[1], sys.argv[2]))

//! The one snapshot trait every stateful part of the machine implements (Firecracker's shape,
//! style.md 6.2): the CPU state, RAM, every device and the machine itself.
//!
//! `save` returns a plain serde value; the snapshot file format (magic, version, sections with
//! lengths and checksums) lives in `machine::snapshot` and only ever stores these values.
//! `restore` builds the part again from such a value plus whatever cannot be serialized
//! (interrupt lines, output sinks, attached disks, memory handles): the `ConstructorArgs`.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Save and restore of one part of the machine.
///
/// Laws every implementation keeps (checked by the conformance tests):
/// - `restore(args, &x.save())?.save() == x.save()` (through serialized bytes too);
/// - a restore re-drives outputs such as interrupt lines to the levels the state implies;
/// - new fields of a state type carry `#[serde(default)]`, so files written before they existed
///   still load.
pub trait Persist: Sized {
    /// The serializable state.
    type State: Serialize + DeserializeOwned;
    /// What restoring needs besides the state and that is never serialized.
    type ConstructorArgs;
    /// Why a restore can fail (a state that does not fit the arguments, an inconsistent value).
    type Error: std::error::Error;

    /// The current state.
    fn save(&self) -> Self::State;

    /// The part, rebuilt from `state`.
    fn restore(args: Self::ConstructorArgs, state: &Self::State) -> Result<Self, Self::Error>;
}

/// A restore that was refused: the state does not fit (wrong sizes, values out of range).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersistError(pub String);

impl std::fmt::Display for PersistError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot restore state: {}", self.0)
    }
}

impl std::error::Error for PersistError {}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    /// A counter that refuses values above its limit.
    #[derive(Debug)]
    struct Counter {
        value: u32,
        limit: u32,
    }

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct CounterState {
        value: u32,
    }

    impl Persist for Counter {
        type State = CounterState;
        type ConstructorArgs = u32;
        type Error = PersistError;
        fn save(&self) -> CounterState {
            CounterState { value: self.value }
        }
        fn restore(limit: u32, s: &CounterState) -> Result<Self, PersistError> {
            if s.value > limit {
                return Err(PersistError(format!("value {} above limit {limit}", s.value)));
            }
            Ok(Counter { value: s.value, limit })
        }
    }

    #[test]
    fn test_persist_restore_checks_constructor_args() {
        let c = Counter { value: 7, limit: 10 };
        let r = Counter::restore(10, &c.save()).unwrap();
        assert_eq!(r.save(), CounterState { value: 7 });
        assert_eq!(r.limit, 10);
        let e = Counter::restore(5, &c.save()).unwrap_err();
        assert_eq!(e.to_string(), "cannot restore state: value 7 above limit 5");
    }
}

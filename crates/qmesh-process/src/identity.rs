use std::fmt;

/// Who a process is: the name it registers under and its kind
/// (`gateway`, `lb`, `service`, …). Discovery keys processes by these.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub name: String,
    pub kind: String,
}

impl Identity {
    pub fn new(name: impl Into<String>, kind: impl Into<String>) -> Identity {
        Identity { name: name.into(), kind: kind.into() }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.kind)
    }
}

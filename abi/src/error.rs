//! Error codes, returned as negative labels in the result [`MsgTag`](crate::MsgTag).
//! Values are Fiasco's (which reuse the POSIX numbers).

/// An error reported by the kernel for an invocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i64)]
pub enum Error {
    /// Operation not permitted: missing rights.
    Perm = 1,
    /// No such object: empty or invalid capability slot.
    NoEnt = 2,
    /// Out of kernel memory or quota.
    NoMem = 12,
    /// Object exists or slot busy.
    Exists = 17,
    /// Invalid argument (bad flexpage, bad length, bad word count).
    Inval = 22,
    /// The message does not fit the receive window.
    MsgTooLong = 24,
    /// Operation not supported by the object.
    NoSys = 38,
    /// Wrong protocol for this object.
    BadProto = 39,
    /// Timeout expired.
    Timeout = 0x10002,
    /// The IPC was aborted (`ex_regs` cancel, or the partner went away mid-operation).
    Canceled = 0x10003,
}

impl Error {
    pub const ALL: [Error; 10] = [
        Error::Perm,
        Error::NoEnt,
        Error::NoMem,
        Error::Exists,
        Error::Inval,
        Error::MsgTooLong,
        Error::NoSys,
        Error::BadProto,
        Error::Timeout,
        Error::Canceled,
    ];

    pub const fn code(self) -> i64 {
        self as i64
    }

    pub fn from_code(code: i64) -> Option<Error> {
        Self::ALL.into_iter().find(|e| e.code() == code)
    }
}

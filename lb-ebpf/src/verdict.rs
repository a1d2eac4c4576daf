//! Why the `lb` program does not forward a packet, and the verdict that follows.

use lb_common::stats::{Counter, DropReason, PassReason};

use crate::net::OutOfBounds;

/// A packet the `lb` program does not forward: the variant decides the verdict (`XDP_PASS`,
/// the host gets it untouched, or `XDP_DROP`), the reason the counter. Both mappings are
/// exhaustive matches, so a new reason cannot get a verdict by default.
#[derive(Clone, Copy)]
pub enum Unhandled {
    /// Not ours to balance: passed to the host untouched.
    Pass(PassReason),
    /// Ours but unusable: malformed, or a VIP packet that cannot be forwarded.
    Drop(DropReason),
}

impl Unhandled {
    /// The reason's counter.
    #[inline(always)]
    pub fn counter(self) -> Counter {
        match self {
            Unhandled::Pass(reason) => reason.counter(),
            Unhandled::Drop(reason) => reason.counter(),
        }
    }
}

impl From<PassReason> for Unhandled {
    #[inline(always)]
    fn from(reason: PassReason) -> Self {
        Unhandled::Pass(reason)
    }
}

impl From<DropReason> for Unhandled {
    #[inline(always)]
    fn from(reason: DropReason) -> Self {
        Unhandled::Drop(reason)
    }
}

/// A header cut short by the end of the packet is a parse error.
impl From<OutOfBounds> for DropReason {
    #[inline(always)]
    fn from(_: OutOfBounds) -> Self {
        DropReason::ParseError
    }
}

impl From<OutOfBounds> for Unhandled {
    #[inline(always)]
    fn from(_: OutOfBounds) -> Self {
        Unhandled::Drop(DropReason::ParseError)
    }
}

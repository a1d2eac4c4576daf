//! Health checks that travel the serving path: the agent's check sockets carry a mark naming a
//! backend, their packets are routed into the check interface, and the `steer_check` program
//! there sends each one to its backend the way the `lb` program sends clients' packets (the
//! Ethernet frame to the backend's MAC, or encapsulated in the datapath's tunnel).

/// What every check socket's mark carries in its high 16 bits ("LB").
pub const CHECK_MARK_TAG: u32 = 0x4c42_0000;
/// The bits of a mark that say it is a check's: the agent's routing rule matches them.
pub const CHECK_MARK_MASK: u32 = 0xffff_0000;

/// The mark of the check sockets of path `slot` (a backend id, below `MAX_BACKENDS`).
pub const fn check_mark(slot: u32) -> u32 {
    CHECK_MARK_TAG | (slot & !CHECK_MARK_MASK)
}

/// The path slot a mark names, if it is a check's.
pub const fn check_slot(mark: u32) -> Option<u32> {
    if mark & CHECK_MARK_MASK == CHECK_MARK_TAG {
        Some(mark & !CHECK_MARK_MASK)
    } else {
        None
    }
}

/// Value of `CHECK_PATHS`, by slot: how to send a check to one backend of one VIP. All zeros
/// (`ifindex` 0): no path, the check's packets are dropped.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CheckPath {
    /// The backend's address, network byte order, IPv4 in the first 4 bytes: the tunnel's
    /// outer destination.
    pub addr: [u8; 16],
    /// [`crate::maps::Family`] of `addr`.
    pub family: u8,
    /// [`crate::maps::ForwardMode`] of the VIP, as u8.
    pub forward: u8,
    /// Always zero.
    pub _pad: [u8; 2],
    /// The interface the frame leaves by.
    pub ifindex: u32,
    /// Its MTU: an encapsulated check that would exceed it is dropped and counted.
    pub mtu: u32,
    /// The frame's first 12 bytes: the destination MAC (the backend's, or its gateway's),
    /// then the source MAC (the egress interface's). One array, so the program copies it into
    /// the frame straight from the map.
    pub macs: [u8; 12],
}

impl CheckPath {
    /// The two MACs as `macs` holds them.
    pub fn macs(destination: [u8; 6], source: [u8; 6]) -> [u8; 12] {
        let mut macs = [0; 12];
        macs[..6].copy_from_slice(&destination);
        macs[6..].copy_from_slice(&source);
        macs
    }
}

/// Index into `CHECK_STATS`: what `steer_check` did with a packet.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CheckCounter {
    /// Sent to its backend with its MACs rewritten (DSR).
    Steered = 0,
    /// Sent to its backend encapsulated (tunnel).
    Encapsulated,
    /// Dropped: no mark of a check's (nothing else is routed into the check interface).
    NotCheck,
    /// Dropped: the slot has no path (the backend's next hop is not resolved yet).
    NoPath,
    /// Dropped: not IPv4 or IPv6, or truncated.
    Malformed,
    /// Dropped: encapsulated, the packet would exceed the egress MTU.
    TooBig,
    /// Dropped: the kernel refused to grow the packet or to redirect it.
    Failed,
}

impl CheckCounter {
    /// Every counter, in index order.
    pub const ALL: [CheckCounter; 7] = [
        CheckCounter::Steered,
        CheckCounter::Encapsulated,
        CheckCounter::NotCheck,
        CheckCounter::NoPath,
        CheckCounter::Malformed,
        CheckCounter::TooBig,
        CheckCounter::Failed,
    ];
    /// Number of counters (size of `CHECK_STATS`).
    pub const COUNT: u32 = Self::ALL.len() as u32;

    /// The counter's name in `lb stats` and `/metrics`.
    pub const fn name(self) -> &'static str {
        match self {
            CheckCounter::Steered => "steered",
            CheckCounter::Encapsulated => "encapsulated",
            CheckCounter::NotCheck => "not_check",
            CheckCounter::NoPath => "no_path",
            CheckCounter::Malformed => "malformed",
            CheckCounter::TooBig => "too_big",
            CheckCounter::Failed => "failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_names_its_slot_and_other_marks_none() {
        assert_eq!(check_slot(check_mark(0)), Some(0));
        assert_eq!(check_slot(check_mark(16383)), Some(16383));
        assert_eq!(check_mark(7), 0x4c42_0007);
        assert_eq!(check_slot(0), None);
        assert_eq!(check_slot(0x4c43_0001), None);
        assert_eq!(check_slot(7), None);
    }

    #[test]
    fn counters_are_indexed_in_order() {
        for (i, counter) in CheckCounter::ALL.iter().enumerate() {
            assert_eq!(*counter as usize, i);
        }
    }
}

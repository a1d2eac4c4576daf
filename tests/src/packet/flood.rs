//! Frames of a flood of new flows: one IPv4 frame as a template, each copy from another
//! random source address and port, its IPv4 and TCP/UDP checksums recomputed (a bridge's
//! netfilter drops frames with a bad IP checksum, and a backend those with a bad TCP one).

use crate::packet::frames::{l2_len, Frame};

/// A flood of frames like `template`, from random IPv4 sources.
pub struct FloodFrames {
    frame: Vec<u8>,
    /// Where the IPv4 header starts.
    ip: usize,
    /// Where the transport header starts.
    transport: usize,
    /// The transport checksum's offset in the transport header (TCP 16, UDP 6).
    checksum: usize,
    state: u64,
}

impl FloodFrames {
    /// Copies of `template` (an IPv4 TCP or UDP frame), from sources drawn by a generator
    /// seeded with `seed`.
    pub fn new(template: &Frame, seed: u64) -> Self {
        let frame = template.build();
        let ip = l2_len(&frame);
        assert_eq!(frame[ip] >> 4, 4, "an IPv4 template");
        let transport = ip + usize::from(frame[ip] & 0x0f) * 4;
        let checksum = match frame[ip + 9] {
            6 => 16,
            17 => 6,
            other => panic!("protocol {other}: not TCP or UDP"),
        };
        Self {
            frame,
            ip,
            transport,
            checksum,
            state: seed | 1,
        }
    }

    /// Sends the frames from `mac` (the template's is a made-up client MAC).
    pub fn set_source_mac(&mut self, mac: [u8; 6]) {
        self.frame[6..12].copy_from_slice(&mac);
    }

    /// xorshift64*: fast and good enough to spread sources over every set of a table.
    fn random(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// The next frame: the template from a new random source address (in 1.0.0.0/8 to
    /// 223.0.0.0/8, never a network of the labs) and port (1024 and up).
    pub fn next_frame(&mut self) -> &[u8] {
        let bits = self.random();
        let first = 1 + (bits % 223) as u8;
        let source = [
            first,
            (bits >> 8) as u8,
            (bits >> 16) as u8,
            (bits >> 24) as u8,
        ];
        let port = 1024 + ((bits >> 32) as u16 % 64512);
        let (ip, transport) = (self.ip, self.transport);
        self.frame[ip + 12..ip + 16].copy_from_slice(&source);
        self.frame[transport..transport + 2].copy_from_slice(&port.to_be_bytes());
        self.frame[ip + 10..ip + 12].copy_from_slice(&[0, 0]);
        let header = checksum(&self.frame[ip..transport], 0);
        self.frame[ip + 10..ip + 12].copy_from_slice(&header.to_be_bytes());
        let at = transport + self.checksum;
        self.frame[at..at + 2].copy_from_slice(&[0, 0]);
        let ip_len = usize::from(u16::from_be_bytes([self.frame[ip + 2], self.frame[ip + 3]]));
        let segment = &self.frame[transport..ip + ip_len];
        let mut pseudo = 0u32;
        for pair in self.frame[ip + 12..ip + 20].chunks(2) {
            pseudo += u32::from(u16::from_be_bytes([pair[0], pair[1]]));
        }
        pseudo += u32::from(self.frame[ip + 9]) + segment.len() as u32;
        let sum = checksum(segment, pseudo);
        self.frame[at..at + 2].copy_from_slice(&sum.to_be_bytes());
        &self.frame
    }
}

/// The Internet checksum of `bytes`, starting from the partial sum `sum`.
fn checksum(bytes: &[u8], mut sum: u32) -> u16 {
    for pair in bytes.chunks(2) {
        let high = u32::from(pair[0]) << 8;
        sum += high | pair.get(1).copied().map_or(0, u32::from);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::frames::verify_checksums;

    #[test]
    fn every_frame_has_valid_checksums_and_a_new_source() {
        for template in [
            Frame::syn("192.0.2.9", 1000, "10.0.0.100", 80),
            Frame::udp("192.0.2.9", 1000, "10.0.0.100", 53),
        ] {
            let mut flood = FloodFrames::new(&template, 7);
            let first = flood.next_frame().to_vec();
            verify_checksums(&first);
            let second = flood.next_frame().to_vec();
            verify_checksums(&second);
            assert_ne!(first[26..30], second[26..30], "another source");
            assert_eq!(first[30..34], second[30..34], "the same VIP");
        }
    }
}

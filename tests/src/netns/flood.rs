//! A flood of new flows sent as raw Ethernet frames from a lab host: spoofed sources, so
//! nothing answers and every frame is a new flow to the load balancer.

use std::time::{Duration, Instant};

use crate::{
    netns::Netns,
    packet::{flood::FloodFrames, frames::Frame},
};

/// What a flood sent.
#[derive(Clone, Copy, Debug)]
pub struct FloodSent {
    /// Frames sent.
    pub frames: usize,
    /// How long it took.
    pub elapsed: Duration,
}

/// Sends `count` frames like `template` (IPv4, to the load balancer's MAC `to_mac`), each
/// from a random source, out of `interface` of `ns`, at about `per_second`; runs in a thread
/// of its own, in the namespace. Frames the interface's queue refuses are sent again.
pub fn send_flood(
    ns: &Netns,
    interface: &str,
    template: Frame,
    to_mac: [u8; 6],
    count: usize,
    per_second: u32,
) -> std::thread::JoinHandle<FloodSent> {
    send_flood_copies(ns, interface, template, to_mac, count, per_second, 1)
}

/// [`send_flood`] with each frame sent `copies` times in a row (the frames counted once): two
/// packets of a flow make it established to the load balancer, protected from eviction.
pub fn send_flood_copies(
    ns: &Netns,
    interface: &str,
    template: Frame,
    to_mac: [u8; 6],
    count: usize,
    per_second: u32,
    copies: usize,
) -> std::thread::JoinHandle<FloodSent> {
    let from_mac = ns.mac(interface);
    let ifindex = ns.ifindex(interface);
    ns.spawn(move || {
        let mut frames = FloodFrames::new(&template.to_mac(to_mac), 0x5eed_f100d);
        frames.set_source_mac(from_mac);
        let socket = PacketSocket::open(ifindex).expect("AF_PACKET socket");
        let start = Instant::now();
        // Bursts of 1 ms worth of frames, paced against the clock.
        let burst = (per_second / 1000).max(1) as usize;
        let mut sent = 0;
        while sent < count {
            for _ in 0..burst.min(count - sent) {
                let frame = frames.next_frame();
                for _ in 0..copies {
                    while let Err(error) = socket.send(frame) {
                        assert_eq!(
                            error.raw_os_error(),
                            Some(libc::ENOBUFS),
                            "sending a flood frame: {error}"
                        );
                        std::thread::yield_now();
                    }
                }
                sent += 1;
            }
            // The flood's rate, not a wait for anything.
            let due = Duration::from_secs_f64(sent as f64 / f64::from(per_second));
            if let Some(early) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(early);
            }
        }
        FloodSent {
            frames: sent,
            elapsed: start.elapsed(),
        }
    })
}

/// An `AF_PACKET` socket sending whole frames out of one interface.
struct PacketSocket {
    fd: std::os::fd::OwnedFd,
    address: libc::sockaddr_ll,
}

impl PacketSocket {
    fn open(ifindex: u32) -> std::io::Result<Self> {
        // SAFETY: socket(2) with constant arguments; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a socket we just opened and own.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain data; all zeros is a valid value.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_ifindex = ifindex as i32;
        address.sll_halen = 6;
        Ok(Self { fd, address })
    }

    fn send(&self, frame: &[u8]) -> std::io::Result<()> {
        use std::os::fd::AsRawFd as _;
        // SAFETY: `frame` is valid for its length, `address` is a sockaddr_ll of the size
        // given; sendto only reads them.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                std::ptr::from_ref(&self.address).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if sent < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

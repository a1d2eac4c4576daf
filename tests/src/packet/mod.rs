//! The packet harness: frames ([`frames`]) run through the real XDP program with
//! `BPF_PROG_TEST_RUN`, on maps the test fills ([`lab`]) or on a running agent's pinned maps
//! ([`probe`]).

pub mod flood;
pub mod frames;
pub mod lab;
pub mod probe;

//! The programs' size as the kernel sees it: instructions after loading, and instructions the
//! verifier processed (its complexity limit is 1,000,000). Run with `--nocapture` to print the
//! figures the README reports.

use lb_user::datapath::{Datapath, Options, Program};

#[test]
fn programs_stay_far_below_the_verifier_limits() {
    let mut datapath = Datapath::load(&Options {
        conntrack_size: 16,
        pin_dir: None,
        fresh_state: false,
    })
    .expect("load");
    for program in [Program::Balancer, Program::Decap] {
        let info = datapath
            .program(program)
            .expect("program")
            .info()
            .expect("info");
        let instructions = info.size_translated().expect("xlated size") / 8;
        let verified = info.verified_instruction_count().expect("verified count");
        println!(
            "{}: {instructions} instructions, {verified} processed by the verifier",
            program.name()
        );
        assert!(
            instructions < 4096,
            "{} grew to {instructions} instructions",
            program.name()
        );
        assert!(
            verified < 200_000,
            "{} needs {verified} verifier steps: state explosion?",
            program.name()
        );
    }
}

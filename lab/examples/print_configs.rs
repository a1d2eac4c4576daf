//! Prints the configurations of `docs/REDUNDANCY.md` as the document shows them, to paste
//! after changing what generates them: `cargo run -p lb-lab --example print_configs`.

fn main() {
    for example in lb_lab::routing::examples::documented() {
        println!("{}", lb_lab::routing::examples::markdown(&example));
    }
}

//! The `hostile` group (issue 15): each attack a reviewer got through, as a test that
//! failed before its fix. Run the group alone with `cargo test -p latchkey-gateway hostile`.
//! Each module names the items of the issue it covers.

mod credentials;
mod headers;
mod identity;
mod logs;
mod mixup;
mod network;
mod relay;
mod resource;

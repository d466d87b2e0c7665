//! The lock table driven by tasks on the real reactor: one node over its
//! local server, and several nodes over a lock server behind a simulated
//! network that delays and reorders messages between nodes.

mod harness;
mod multi_node;
mod single_node;

//! The tools that drive mutebridge from outside.

pub mod bench;
pub mod send;

//! Go's semantics under real conditions (issue 13), one module per rule.

#[path = "go_semantics/exhaustion.rs"]
mod exhaustion;

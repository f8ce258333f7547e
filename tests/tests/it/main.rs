mod harness;
mod queue;
mod support;

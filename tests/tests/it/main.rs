mod harness;
mod queue;
mod runner;
mod s3;
mod support;

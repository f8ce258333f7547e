mod harness;
mod hub;
mod queue;
mod runner;
mod s3;
mod support;
mod worker;

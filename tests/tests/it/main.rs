mod harness;
mod hub;
mod kube_api;
mod queue;
mod runner;
mod s3;
mod support;
mod worker;

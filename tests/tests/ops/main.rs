//! Operations tests, in one test binary: each binary links librdkafka and weighs about
//! 175 MB in a debug build, and these suites share their helpers (`formstream_tests::deploy`).
//! - `compose`: docker-compose.yml, the Dockerfile and the compose Prometheus config against the
//!   binary's flags;
//! - `compose_stack`: the images built and the whole compose stack run (needs a Docker daemon);
//! - `k8s`: deploy/k8s against the binary's flags and defaults, and through kubeconform;
//! - `dashboards`: the Grafana dashboard's and the alert rules' PromQL against the code's metrics;
//! - `docs`: every Markdown link and anchor of the repository works;
//! - `sasl_ssl`: the gateway and a processor on a private SASL_SSL broker;
//! - `prometheus_scrape`: a real Prometheus scraping a gateway and a processor;
//! - `release_binary`: deploy/split-debuginfo.sh, the binary without its debug info;
//! - `processors`: every processor folder has the same shape and is registered in one line.

mod compose;
mod compose_stack;
mod dashboards;
mod docs;
mod k8s;
mod processors;
mod prometheus_scrape;
mod release_binary;
mod sasl_ssl;

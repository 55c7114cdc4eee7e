//! docker-compose.yml, docker-compose.offline.yml, the Dockerfiles and the compose Prometheus
//! config, checked against the real binary without Docker: a service per registered
//! processor, scalable (no container name; no host port but its API's), environment variables the
//! commands really read, files written only into volumes, healthchecks on the ports the services
//! listen on, and a Prometheus job that finds every replica. `compose_stack` runs the stack itself.

use std::collections::BTreeSet;

use formstream_tests::deploy::{
    CommandEnv, path_of, port_of, processors, read_repo_file, yaml_documents,
};
use serde_yaml_ng::Value;

fn compose() -> Value {
    yaml_documents("docker-compose.yml")
        .pop()
        .expect("docker-compose.yml has a document")
}

fn offline() -> Value {
    yaml_documents("docker-compose.offline.yml")
        .pop()
        .expect("docker-compose.offline.yml has a document")
}

/// Where the image keeps a service's files (its WORKDIR's data/, see the Dockerfile).
const DATA_DIR: &str = "/var/lib/formstream/data";
/// The image's WORKDIR, against which relative paths resolve.
const WORKDIR: &str = "/var/lib/formstream";

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .map(|items| {
            items
                .iter()
                .map(|v| v.as_str().expect("a string").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A service's environment as (name, value) pairs, from either compose form.
fn environment(service: &Value) -> Vec<(String, String)> {
    match &service["environment"] {
        Value::Mapping(map) => map
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    Value::String(s) => s.clone(),
                    other => serde_yaml_ng::to_string(other)
                        .expect("a scalar")
                        .trim()
                        .to_owned(),
                };
                (k.as_str().expect("a name").to_owned(), value)
            })
            .collect(),
        Value::Sequence(items) => items
            .iter()
            .map(|item| {
                let item = item.as_str().expect("NAME=value");
                let (k, v) = item.split_once('=').unwrap_or((item, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The services that run the formstream image, with their command.
fn formstream_services(compose: &Value) -> Vec<(String, Vec<String>)> {
    let services: Vec<(String, Vec<String>)> = compose["services"]
        .as_mapping()
        .expect("services")
        .iter()
        .filter(|(_, s)| {
            s["image"]
                .as_str()
                .is_some_and(|i| i == "${FORMSTREAM_IMAGE:-formstream:local}")
        })
        .map(|(name, s)| {
            (
                name.as_str().expect("a name").to_owned(),
                strings(&s["command"]),
            )
        })
        .collect();
    // The checks below run over these: finding none would make them pass without checking.
    for expected in ["topics", "gateway"] {
        assert!(
            services.iter().any(|(name, _)| name == expected),
            "the {expected} service does not run ${{FORMSTREAM_IMAGE:-formstream:local}}"
        );
    }
    services
}

/// The subcommand path of a command line: its words up to the first flag.
fn subcommand(command: &[String]) -> Vec<&str> {
    command
        .iter()
        .take_while(|w| !w.starts_with('-'))
        .map(String::as_str)
        .collect()
}

/// The variables the Dockerfile sets for every container.
fn dockerfile_env() -> Vec<(String, String)> {
    let dockerfile = read_repo_file("Dockerfile");
    let mut vars = Vec::new();
    let mut in_env = false;
    for line in dockerfile.lines() {
        let line = line.trim();
        let rest = if let Some(rest) = line.strip_prefix("ENV ") {
            rest
        } else if in_env {
            line
        } else {
            continue;
        };
        for word in rest.trim_end_matches('\\').split_whitespace() {
            if let Some((k, v)) = word.split_once('=') {
                vars.push((k.to_owned(), v.to_owned()));
            }
        }
        in_env = line.ends_with('\\');
    }
    vars
}

/// The listen address a service ends up with: its own environment, else the Dockerfile's.
fn listen_port(service: &Value, variable: &str) -> u16 {
    let env = environment(service);
    let address = env
        .iter()
        .chain(dockerfile_env().iter())
        .find(|(k, _)| k == variable)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("{variable} is set neither in the service nor the Dockerfile"));
    assert!(
        address.starts_with("0.0.0.0:"),
        "{variable}={address}: a container must listen on 0.0.0.0 to be reachable"
    );
    port_of(&address)
}

/// The URL a `curl`/`wget` healthcheck fetches.
fn healthcheck_url(service_name: &str, service: &Value) -> String {
    let test = strings(&service["healthcheck"]["test"]);
    assert_eq!(
        test.first().map(String::as_str),
        Some("CMD"),
        "{service_name}: the healthcheck runs a command without a shell"
    );
    test.iter()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("{service_name}: the healthcheck fetches no URL: {test:?}"))
        .clone()
}

#[test]
fn every_registered_processor_has_a_scalable_service() {
    let compose = compose();
    let services = &compose["services"];
    let expected = processors();
    let mut missing = Vec::new();
    for name in &expected {
        let service = &services[name.as_str()];
        if service.is_null() {
            missing.push(name.clone());
            continue;
        }
        assert_eq!(
            strings(&service["command"]),
            ["process", name.as_str()],
            "service {name} runs `formstream process {name}`"
        );
        // `docker compose up --scale` refuses fixed container names and fixed host ports. Only a
        // processor that serves an API of its own (slang's search; never --scaled, see its
        // service) publishes that port, and no other.
        assert!(
            service["container_name"].is_null(),
            "{name}: a container_name prevents --scale"
        );
        let api_ports: Vec<u16> = environment(service)
            .iter()
            .filter(|(k, _)| k.ends_with("_LISTEN") && k != "FORMSTREAM_METRICS_LISTEN")
            .map(|(_, v)| port_of(v))
            .collect();
        for published in strings(&service["ports"]) {
            assert!(
                api_ports.contains(&port_of(&published)),
                "{name}: host port {published} prevents --scale (Prometheus reaches it on the \
                 compose network); only an API's own port may be published"
            );
        }
    }
    assert!(
        missing.is_empty(),
        "docker-compose.yml has no service for processors {missing:?}; add one per processor \
         (and its name to deploy/prometheus/prometheus.yml)"
    );
    // No service for a processor the binary does not have.
    for (name, command) in formstream_services(&compose) {
        if command.first().map(String::as_str) == Some("process") {
            assert!(
                expected.contains(&command[1]),
                "service {name} runs unknown processor {}",
                command[1]
            );
        }
    }
}

#[test]
fn environment_names_are_flags_of_their_commands() {
    let compose = compose();
    let mut problems = Vec::new();
    let mut commands = BTreeSet::new();
    for (name, command) in formstream_services(&compose) {
        let path = subcommand(&command);
        assert!(!path.is_empty(), "{name} has no command");
        commands.insert(path.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        let env = CommandEnv::of(&path);
        for (variable, _) in environment(&compose["services"][name.as_str()]) {
            if !env.accepts(&variable) {
                problems.push(format!(
                    "service {name}: `formstream {}` does not read {variable}",
                    path.join(" ")
                ));
            }
        }
    }
    // The Dockerfile's variables reach every command: each must be read by the command that
    // needs it and be harmless elsewhere (clap ignores variables a command has no flag for).
    let all: Vec<CommandEnv> = commands
        .iter()
        .map(|c| CommandEnv::of(&c.iter().map(String::as_str).collect::<Vec<_>>()))
        .collect();
    for (variable, _) in dockerfile_env() {
        if !all.iter().any(|env| env.accepts(&variable)) {
            problems.push(format!("Dockerfile: no command reads {variable}"));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn healthchecks_probe_the_ports_the_services_listen_on() {
    let compose = compose();
    let services = &compose["services"];
    let processor_env = CommandEnv::of(&["process", &processors()[0]]);
    let gateway_env = CommandEnv::of(&["gateway"]);
    let health_paths = ["/healthz", "/readyz"];

    for name in processors() {
        let service = &services[name.as_str()];
        let url = healthcheck_url(&name, service);
        let port = listen_port(service, "FORMSTREAM_METRICS_LISTEN");
        assert!(processor_env.vars.contains_key("FORMSTREAM_METRICS_LISTEN"));
        assert_eq!(port_of(&url), port, "{name}: healthcheck {url}");
        assert!(
            health_paths.contains(&path_of(&url).as_str()),
            "{name}: {url}"
        );
    }

    let gateway = &services["gateway"];
    assert_eq!(strings(&gateway["command"]), ["gateway"]);
    let port = listen_port(gateway, "FORMSTREAM_GATEWAY_LISTEN");
    assert!(gateway_env.vars.contains_key("FORMSTREAM_GATEWAY_LISTEN"));
    let url = healthcheck_url("gateway", gateway);
    assert_eq!(port_of(&url), port, "gateway: healthcheck {url}");
    assert!(health_paths.contains(&path_of(&url).as_str()));
    // Its published port leads to the port it listens on.
    let published = strings(&gateway["ports"]);
    assert!(
        published.iter().any(|p| port_of(p) == port),
        "gateway publishes {published:?}, listens on {port}"
    );

    // The setup job runs once before the services that need the topics.
    assert_eq!(
        strings(&services["topics"]["command"]),
        ["topics", "create"]
    );
    for name in processors().iter().chain([&"gateway".to_owned()]) {
        assert_eq!(
            services[name.as_str()]["depends_on"]["topics"]["condition"].as_str(),
            Some("service_completed_successfully"),
            "{name} waits for the topics"
        );
    }
}

#[test]
fn kafka_is_the_official_image_in_kraft_mode_at_the_pinned_version() {
    let compose = compose();
    let kafka = &compose["services"]["kafka"];
    let pom = read_repo_file("deploy/local/pom.xml");
    let version = pom
        .split("<kafka.version>")
        .nth(1)
        .and_then(|rest| rest.split("</kafka.version>").next())
        .expect("kafka.version in pom.xml");
    assert_eq!(
        kafka["image"].as_str(),
        Some(format!("apache/kafka:{version}").as_str()),
        "the compose broker runs the version the local broker and the tests use"
    );
    // Offline, the same version built from the same jars (deploy/docker/build.sh tags it so).
    assert_eq!(
        offline()["services"]["kafka"]["image"].as_str(),
        Some(format!("formstream-kafka:{version}").as_str()),
        "docker-compose.offline.yml runs the Kafka image build.sh makes from pom.xml's version"
    );
    let build = read_repo_file("deploy/docker/build.sh");
    assert!(
        build.contains("\"formstream-kafka:$version\""),
        "build.sh tags formstream-kafka:<version>"
    );
    let env = environment(kafka);
    let get = |k: &str| {
        env.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.as_str())
            .unwrap_or_default()
            .to_owned()
    };
    assert_eq!(get("KAFKA_PROCESS_ROLES"), "broker,controller");
    assert!(get("KAFKA_ADVERTISED_LISTENERS").contains("kafka:9092"));
    assert!(!kafka["healthcheck"].is_null(), "kafka has a healthcheck");
    // Every formstream service talks to it by its compose name.
    for (name, _) in formstream_services(&compose) {
        let env = environment(&compose["services"][name.as_str()]);
        assert!(
            env.iter()
                .any(|(k, v)| k == "FORMSTREAM_KAFKA_BOOTSTRAP" && v == "kafka:9092"),
            "{name} connects to kafka:9092"
        );
    }
}

#[test]
fn prometheus_scrapes_every_replica_of_every_service() {
    let compose = compose();
    let services = &compose["services"];
    let config = yaml_documents("deploy/prometheus/prometheus.yml")
        .pop()
        .expect("prometheus.yml");
    // (DNS name, port) pairs Prometheus resolves: every replica of a service is an A record.
    let mut scraped = BTreeSet::new();
    for job in config["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs")
    {
        for sd in job["dns_sd_configs"].as_sequence().into_iter().flatten() {
            assert_eq!(sd["type"].as_str(), Some("A"));
            let port = sd["port"].as_u64().expect("a port") as u16;
            for name in strings(&sd["names"]) {
                scraped.insert((name, port));
            }
        }
    }
    let mut expected = BTreeSet::new();
    for name in processors() {
        let port = listen_port(&services[name.as_str()], "FORMSTREAM_METRICS_LISTEN");
        expected.insert((name, port));
    }
    expected.insert((
        "gateway".to_owned(),
        listen_port(&services["gateway"], "FORMSTREAM_GATEWAY_LISTEN"),
    ));
    let missing: Vec<_> = expected.difference(&scraped).collect();
    assert!(
        missing.is_empty(),
        "deploy/prometheus/prometheus.yml does not scrape {missing:?}"
    );
    // Prometheus and Grafana get the files they need.
    let prometheus_volumes = strings(&services["prometheus"]["volumes"]).join(" ");
    for file in ["prometheus.yml", "alerts.yml"] {
        assert!(prometheus_volumes.contains(&format!("./deploy/prometheus/{file}:")));
    }
    let grafana_volumes = strings(&services["grafana"]["volumes"]).join(" ");
    assert!(grafana_volumes.contains("./deploy/grafana/dashboards:"));
    assert!(grafana_volumes.contains("./deploy/grafana/provisioning:"));
}

/// The Dockerfiles of the stack: the formstream image and the offline Kafka and Prometheus.
const DOCKERFILES: [&str; 3] = [
    "Dockerfile",
    "deploy/docker/kafka/Dockerfile",
    "deploy/docker/prometheus/Dockerfile",
];

#[test]
fn the_images_build_on_any_base_without_buildkit_and_run_as_non_root() {
    for file in DOCKERFILES {
        let dockerfile = read_repo_file(file);
        let lines: Vec<&str> = dockerfile
            .lines()
            .map(str::trim)
            .filter(|l| !l.starts_with('#'))
            .collect();
        // The base is a build argument: debian:bookworm-slim from a registry, or the one
        // deploy/docker/build.sh makes from Debian packages.
        assert!(
            lines.contains(&"ARG BASE=debian:bookworm-slim") && lines.contains(&"FROM ${BASE}"),
            "{file}: FROM the BASE build argument, debian:bookworm-slim by default"
        );
        for from in lines.iter().filter(|l| l.starts_with("FROM ")) {
            assert!(
                *from == "FROM ${BASE}" || from.starts_with("FROM ${BASE} AS "),
                "{file}: `{from}`: every stage starts from BASE (no toolchain image to pull)"
            );
        }
        // Debian's docker.io has only the legacy builder.
        for buildkit_only in ["--mount=", "# syntax=", "<<EOF", "--chmod=", "--link"] {
            assert!(
                !dockerfile.contains(buildkit_only),
                "{file}: `{buildkit_only}` needs BuildKit"
            );
        }
        // An apt-get update that reaches no mirror must fail the build, not install nothing.
        for update in lines.iter().filter(|l| l.contains("apt-get update")) {
            assert!(update.contains("--error-on=any"), "{file}: {update}");
        }
        let user = lines
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix("USER "))
            .unwrap_or_else(|| panic!("{file} sets USER"));
        let uid = user.split(':').next().expect("a user");
        assert!(
            uid != "0" && uid != "root",
            "{file}: USER {user} is not root"
        );
    }
    // The formstream image: a numeric uid (Kubernetes' runAsNonRoot checks it without resolving a
    // name), the one binary from the build context, and the working folder's data/ made for it.
    let dockerfile = read_repo_file("Dockerfile");
    let user = dockerfile
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("USER "))
        .expect("USER");
    assert!(
        user.split(':')
            .all(|id| id.parse::<u32>().is_ok_and(|id| id != 0)),
        "USER {user}: numeric and non-root"
    );
    // The binary comes from the build context as deploy/split-debuginfo.sh left it (no debug
    // sections, symbols kept): the Dockerfile's default, compose's default, .dockerignore and
    // build.sh agree on that file, and no image strips anything itself.
    let split = "target/release/image/formstream";
    assert!(dockerfile.contains(&format!("ARG BINARY={split}\n")));
    assert!(dockerfile.contains("COPY ${BINARY} /usr/local/bin/formstream"));
    assert!(!dockerfile.contains("strip") && !dockerfile.contains("binutils"));
    assert!(dockerfile.contains(&format!("mkdir -p {DATA_DIR}")));
    assert!(dockerfile.contains(&format!("WORKDIR {WORKDIR}")));
    let ignore = read_repo_file(".dockerignore");
    assert!(
        ignore.lines().any(|l| l == format!("!{split}")),
        ".dockerignore admits the binary `docker build .` copies"
    );
    assert_eq!(
        compose()["services"]["topics"]["build"]["args"]["BINARY"].as_str(),
        Some(format!("${{FORMSTREAM_BINARY:-{split}}}").as_str())
    );
    let build = read_repo_file("deploy/docker/build.sh");
    assert!(build.contains("\"$REPO/deploy/split-debuginfo.sh\" \"$binary\" \"$split\""));
}

/// The value a service's process sees for `variable`: its environment, else the binary's default.
fn effective(service: &Value, env: &CommandEnv, variable: &str) -> Option<String> {
    environment(service)
        .into_iter()
        .find(|(k, _)| k == variable)
        .map(|(_, v)| v)
        .or_else(|| env.vars.get(variable).cloned().flatten())
}

#[test]
fn every_file_a_service_writes_is_in_its_volume() {
    // Outputs (outboxes, CSV folders, the index, the journal) must outlive the container and be
    // writable by the image's user: a named volume on data/, which the image creates for that
    // user, so that a fresh volume takes its ownership.
    let compose = compose();
    let declared = compose["volumes"].as_mapping().expect("top-level volumes");
    let mut problems = Vec::new();
    for (name, command) in formstream_services(&compose) {
        let service = &compose["services"][name.as_str()];
        let env = CommandEnv::of(&subcommand(&command));
        let outputs: Vec<&String> = env
            .vars
            .keys()
            .filter(|k| k.ends_with("_DIR") || k.ends_with("_PATH") || k.ends_with("_OUTBOX"))
            .collect();
        let volume = strings(&service["volumes"])
            .into_iter()
            .find(|v| v.ends_with(&format!(":{DATA_DIR}")));
        for variable in outputs {
            let Some(path) = effective(service, &env, variable) else {
                continue;
            };
            let absolute = if path.starts_with('/') {
                path.clone()
            } else {
                format!("{WORKDIR}/{path}")
            };
            if !absolute.starts_with(&format!("{DATA_DIR}/")) {
                problems.push(format!("{name}: {variable}={path} is outside {DATA_DIR}"));
            } else if volume.is_none() {
                problems.push(format!(
                    "{name}: writes {variable} but mounts no volume on {DATA_DIR}"
                ));
            }
        }
        if let Some(volume) = volume {
            let named = volume.split(':').next().unwrap_or_default();
            assert!(
                declared.keys().any(|k| k.as_str() == Some(named)),
                "{name}: volume {named} is a declared named volume"
            );
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn the_offline_file_only_swaps_images_and_leaves_grafana_out() {
    let compose = compose();
    let offline = offline();
    let services = offline["services"].as_mapping().expect("services");
    for (name, service) in services {
        let name = name.as_str().expect("a name");
        assert!(
            !compose["services"][name].is_null(),
            "docker-compose.offline.yml overrides {name}, which docker-compose.yml lacks"
        );
        let keys: Vec<&str> = service
            .as_mapping()
            .expect("a service")
            .keys()
            .filter_map(Value::as_str)
            .collect();
        for key in keys {
            assert!(
                ["image", "build", "profiles"].contains(&key),
                "docker-compose.offline.yml changes {name}'s {key}: the offline stack must be the \
                 user's stack with other images"
            );
        }
    }
    // Grafana is not packaged by Debian: offline it starts only when asked for.
    assert_eq!(
        strings(&offline["services"]["grafana"]["profiles"]),
        ["grafana"]
    );
    assert_eq!(
        offline["services"]["prometheus"]["image"].as_str(),
        Some("formstream-prometheus:local")
    );
    let build = read_repo_file("deploy/docker/build.sh");
    assert!(build.contains("\"formstream-prometheus:local\""));
}

#[test]
fn every_service_that_reads_the_organisations_file_mounts_the_one_file() {
    // The gateway refuses, and the sheets exporter dead-letters, a spreadsheet an organisation
    // does not own: both read deploy/local/organisations.toml (whose validity core's tests check).
    const VARIABLE: &str = "FORMSTREAM_ORGANISATIONS_FILE";
    let compose = compose();
    let mut readers = Vec::new();
    for (name, command) in formstream_services(&compose) {
        let service = &compose["services"][name.as_str()];
        let env = CommandEnv::of(&subcommand(&command));
        if !env.vars.contains_key(VARIABLE) {
            continue;
        }
        let path = effective(service, &env, VARIABLE)
            .unwrap_or_else(|| panic!("{name} reads {VARIABLE} but does not set it"));
        let mount = format!("./deploy/local/organisations.toml:{path}:ro");
        assert!(
            strings(&service["volumes"]).contains(&mount),
            "{name} mounts {mount}"
        );
        readers.push(name);
    }
    readers.sort();
    assert_eq!(readers, ["gateway", "sheets"]);
}

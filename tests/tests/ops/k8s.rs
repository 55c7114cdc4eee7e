//! The Kubernetes manifests of deploy/k8s, parsed and checked against the real binary:
//! a StatefulSet per registered processor (its pod name is its static group membership) and a
//! Deployment for the gateway, with readiness on /readyz and liveness on /healthz at the port the
//! binary listens on, resource requests, environment names the commands read, a
//! PodDisruptionBudget each, a ServiceMonitor that finds them, and a KEDA ScaledObject that scales
//! a real processor on its real consumer group; and every object through kubeconform, against
//! Kubernetes' and the operators' own schemas (`k8s_schemas`).

use std::collections::{BTreeMap, BTreeSet};

use formstream_tests::deploy::{
    CommandEnv, port_of, processors, repo_root, runnable, yaml_documents,
};
use formstream_tests::k8s_schemas;
use serde_yaml_ng::Value;

/// Every object of every manifest, with the file it came from.
fn objects() -> Vec<(String, Value)> {
    let mut files: Vec<_> = std::fs::read_dir(repo_root().join("deploy/k8s"))
        .expect("deploy/k8s")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    files
        .into_iter()
        .flat_map(|file| {
            yaml_documents(&format!("deploy/k8s/{file}"))
                .into_iter()
                .map(move |doc| (file.clone(), doc))
        })
        .collect()
}

fn of_kind<'a>(objects: &'a [(String, Value)], kind: &str) -> Vec<&'a Value> {
    objects
        .iter()
        .filter(|(_, o)| o["kind"].as_str() == Some(kind))
        .map(|(_, o)| o)
        .collect()
}

/// Every object that runs pods of the formstream image for good: Deployments and StatefulSets.
fn workloads(objects: &[(String, Value)]) -> Vec<&Value> {
    let mut workloads = of_kind(objects, "Deployment");
    workloads.extend(of_kind(objects, "StatefulSet"));
    assert!(workloads.len() > 1, "deploy/k8s has workloads");
    workloads
}

/// The ConfigMaps by name, for the containers that load them with `envFrom`.
fn config_maps(objects: &[(String, Value)]) -> BTreeMap<String, Value> {
    of_kind(objects, "ConfigMap")
        .into_iter()
        .map(|c| (name(c).to_owned(), c.clone()))
        .collect()
}

fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().expect("metadata.name")
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|v| v.as_str().expect("a string").to_owned())
        .collect()
}

/// Whether every label of `selector` is among `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let Some(selector) = selector.as_mapping() else {
        return false;
    };
    !selector.is_empty()
        && selector
            .iter()
            .all(|(k, v)| labels[k.as_str().unwrap()] == *v)
}

/// The variables a container gets: its `env` and the data of the ConfigMaps it loads.
fn container_env(
    container: &Value,
    config_maps: &BTreeMap<String, Value>,
) -> BTreeMap<String, Option<String>> {
    let mut env = BTreeMap::new();
    for source in container["envFrom"].as_sequence().into_iter().flatten() {
        if let Some(map) = source["configMapRef"]["name"].as_str() {
            let data = config_maps
                .get(map)
                .unwrap_or_else(|| panic!("ConfigMap {map} is not in deploy/k8s"));
            for (k, v) in data["data"].as_mapping().into_iter().flatten() {
                env.insert(
                    k.as_str().expect("a name").to_owned(),
                    v.as_str().map(str::to_owned),
                );
            }
        }
    }
    for var in container["env"].as_sequence().into_iter().flatten() {
        env.insert(
            var["name"].as_str().expect("env name").to_owned(),
            var["value"].as_str().map(str::to_owned),
        );
    }
    env
}

/// Checks one workload that runs `command`, whose health endpoints listen on `listen_var`.
fn check_workload(
    deployment: &Value,
    command: &[&str],
    listen_var: &str,
    config_maps: &BTreeMap<String, Value>,
    pdbs: &[&Value],
) {
    let what = name(deployment);
    let pod = &deployment["spec"]["template"];
    let containers = pod["spec"]["containers"].as_sequence().expect("containers");
    assert_eq!(containers.len(), 1, "{what}: one container");
    let container = &containers[0];
    assert_eq!(strings(&container["args"]), command, "{what}: its command");

    let help = CommandEnv::of(command);
    let env = container_env(container, config_maps);
    for variable in env.keys() {
        assert!(
            help.accepts(variable),
            "{what}: `formstream {}` does not read {variable}",
            command.join(" ")
        );
    }
    // The probes reach the port the process listens on: the container's setting, which must
    // keep the binary's default port (so docs, annotations and Services agree), on 0.0.0.0.
    let default_port = help.default_port(listen_var);
    let listen =
        env.get(listen_var).cloned().flatten().unwrap_or_else(|| {
            panic!("{what}: {listen_var} must be set to listen beyond loopback")
        });
    assert!(
        listen.starts_with("0.0.0.0:"),
        "{what}: {listen_var}={listen}"
    );
    assert_eq!(port_of(&listen), default_port, "{what}: {listen_var}");
    let ports: Vec<u64> = container["ports"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|p| p["containerPort"].as_u64())
        .collect();
    assert!(
        ports.contains(&u64::from(default_port)),
        "{what}: containerPort {default_port}"
    );
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
        let get = &container[probe]["httpGet"];
        assert_eq!(get["path"].as_str(), Some(path), "{what}: {probe} path");
        assert_eq!(
            get["port"].as_u64(),
            Some(u64::from(default_port)),
            "{what}: {probe} port"
        );
    }
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(
        annotations["prometheus.io/port"].as_str(),
        Some(default_port.to_string().as_str()),
        "{what}: scrape annotation port"
    );
    for resource in ["cpu", "memory"] {
        assert!(
            !container["resources"]["requests"][resource].is_null(),
            "{what}: requests {resource}"
        );
    }
    assert_eq!(
        pod["spec"]["securityContext"]["runAsNonRoot"].as_bool(),
        Some(true)
    );
    let labels = &pod["metadata"]["labels"];
    assert!(
        selects(&deployment["spec"]["selector"]["matchLabels"], labels),
        "{what}: the selector matches the pod labels"
    );
    assert!(
        pdbs.iter()
            .any(|pdb| selects(&pdb["spec"]["selector"]["matchLabels"], labels)),
        "{what}: a PodDisruptionBudget covers its pods"
    );
}

#[test]
fn every_processor_and_the_gateway_have_a_checked_workload() {
    let objects = objects();
    let config_maps = config_maps(&objects);
    let pdbs = of_kind(&objects, "PodDisruptionBudget");
    let deployments = workloads(&objects);
    let find = |kind: &str, wanted: &str| {
        deployments
            .iter()
            .find(|d| name(d) == wanted && d["kind"].as_str() == Some(kind))
            .copied()
            .unwrap_or_else(|| panic!("deploy/k8s has no {kind} {wanted}"))
    };
    for processor in processors() {
        check_workload(
            find("StatefulSet", &format!("formstream-{processor}")),
            &["process", &processor],
            "FORMSTREAM_METRICS_LISTEN",
            &config_maps,
            &pdbs,
        );
    }
    check_workload(
        find("Deployment", "formstream-gateway"),
        &["gateway"],
        "FORMSTREAM_GATEWAY_LISTEN",
        &config_maps,
        &pdbs,
    );
    // No workload for a processor the binary does not have.
    let known = processors();
    for deployment in &deployments {
        let args = strings(&deployment["spec"]["template"]["spec"]["containers"][0]["args"]);
        if args.first().map(String::as_str) == Some("process") {
            assert!(
                known.contains(&args[1]),
                "{}: unknown processor",
                name(deployment)
            );
        }
    }
}

#[test]
fn every_processor_is_a_stateful_set_whose_pod_name_is_its_instance_id() {
    // --instance-id makes a processor a static member of its group (and validate's transactional
    // id): a member that stops keeps its partitions until --session-timeout unless the same id
    // comes back. A StatefulSet gives a replaced pod the same name, so it comes back at once; a
    // Deployment's rollout names new pods, which would stall the old ones' partitions every time.
    let objects = objects();
    let services = of_kind(&objects, "Service");
    for processor in processors() {
        let wanted = format!("formstream-{processor}");
        let set = of_kind(&objects, "StatefulSet")
            .into_iter()
            .find(|s| name(s) == wanted)
            .unwrap_or_else(|| panic!("deploy/k8s has no StatefulSet {wanted}"));
        let container = &set["spec"]["template"]["spec"]["containers"][0];
        let instance_id = container["env"]
            .as_sequence()
            .into_iter()
            .flatten()
            .find(|v| v["name"].as_str() == Some("FORMSTREAM_INSTANCE_ID"))
            .unwrap_or_else(|| panic!("{wanted}: sets FORMSTREAM_INSTANCE_ID"));
        assert_eq!(
            instance_id["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
            Some("metadata.name"),
            "{wanted}: the instance id is the pod's stable name"
        );
        assert_eq!(
            set["spec"]["podManagementPolicy"].as_str(),
            Some("Parallel"),
            "{wanted}: replicas start and stop together, as a Deployment's would"
        );
        assert_eq!(
            set["spec"]["updateStrategy"]["type"].as_str(),
            Some("RollingUpdate"),
            "{wanted}: a new image rolls out by itself"
        );
        // serviceName names a headless Service that selects the pods.
        let service_name = set["spec"]["serviceName"].as_str().expect("serviceName");
        let pod_labels = &set["spec"]["template"]["metadata"]["labels"];
        assert!(
            services.iter().any(|s| name(s) == service_name
                && s["spec"]["clusterIP"].as_str() == Some("None")
                && selects(&s["spec"]["selector"], pod_labels)),
            "{wanted}: serviceName {service_name} is a headless Service over its pods"
        );
    }
    // No Deployment runs a processor: its pod names change on every rollout.
    for deployment in of_kind(&objects, "Deployment") {
        let args = strings(&deployment["spec"]["template"]["spec"]["containers"][0]["args"]);
        assert_ne!(
            args.first().map(String::as_str),
            Some("process"),
            "{}: a processor must be a StatefulSet",
            name(deployment)
        );
    }
}

/// The image's working folder (Dockerfile WORKDIR), against which relative paths resolve.
const WORKDIR: &str = "/var/lib/formstream";

/// The volume mounted at or above `path` in a pod: its `volumes` entry.
fn volume_for<'a>(pod: &'a Value, container: &Value, path: &str) -> Option<&'a Value> {
    let mount = container["volumeMounts"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter(|m| {
            let at = m["mountPath"].as_str().unwrap_or("\0");
            path == at || path.starts_with(&format!("{}/", at.trim_end_matches('/')))
        })
        .max_by_key(|m| m["mountPath"].as_str().map(str::len))?;
    pod["spec"]["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == mount["name"])
}

#[test]
fn every_file_a_deployment_reads_or_writes_is_on_a_volume() {
    // The root file system is read-only: what a processor writes (outboxes, CSV files, the
    // index, the journal) must be on a writable volume, and a file it must read (the API keys)
    // in a mounted Secret or ConfigMap. A default like `deploy/local/api-keys.toml` exists only in
    // a checkout: a Deployment of a command that reads one must set the variable.
    let objects = objects();
    let config_maps = config_maps(&objects);
    let mut problems = Vec::new();
    for deployment in workloads(&objects) {
        let what = name(deployment);
        let pod = &deployment["spec"]["template"];
        let container = &pod["spec"]["containers"][0];
        let args = strings(&container["args"]);
        let help = CommandEnv::of(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let env = container_env(container, &config_maps);
        for (variable, default) in &help.vars {
            let output = variable.ends_with("_DIR")
                || variable.ends_with("_PATH")
                || variable.ends_with("_OUTBOX");
            let input = variable.ends_with("_FILE");
            if !(output || input) {
                continue;
            }
            let set = env.get(variable).cloned().flatten();
            let Some(path) = set.clone().or(default.clone()) else {
                continue;
            };
            if input && set.is_none() {
                problems.push(format!(
                    "{what}: `formstream {}` reads {variable} (default {path}, a file of a \
                     checkout); set it to a mounted Secret's file",
                    args.join(" ")
                ));
                continue;
            }
            let absolute = if path.starts_with('/') {
                path.clone()
            } else {
                format!("{WORKDIR}/{path}")
            };
            match volume_for(pod, container, &absolute) {
                None => problems.push(format!("{what}: {variable}={path} is on no volume")),
                Some(volume)
                    if input && volume["secret"].is_null() && volume["configMap"].is_null() =>
                {
                    problems.push(format!(
                        "{what}: {variable}={path} is not in a Secret or ConfigMap"
                    ))
                }
                Some(volume)
                    if output
                        && volume["emptyDir"].is_null()
                        && volume["persistentVolumeClaim"].is_null() =>
                {
                    problems.push(format!(
                        "{what}: {variable}={path} is on a read-only volume"
                    ))
                }
                Some(_) => {}
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn the_service_monitor_finds_every_metrics_port() {
    let objects = objects();
    let services = of_kind(&objects, "Service");
    let monitors = of_kind(&objects, "ServiceMonitor");
    assert!(!monitors.is_empty(), "a ServiceMonitor");
    let deployments = workloads(&objects);
    for deployment in deployments {
        let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
        let port_names: Vec<&str> =
            deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
                .as_sequence()
                .into_iter()
                .flatten()
                .filter_map(|p| p["name"].as_str())
                .collect();
        // A Service selects the pods, exposes a named metrics port of theirs, and a monitor
        // selects that Service and scrapes that port.
        let scraped = services.iter().any(|service| {
            selects(&service["spec"]["selector"], pod_labels)
                && service["spec"]["ports"]
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .any(|port| {
                        let target = port["targetPort"].as_str().unwrap_or_default();
                        let port_name = port["name"].as_str().unwrap_or_default();
                        port_names.contains(&target)
                            && monitors.iter().any(|m| {
                                selects(
                                    &m["spec"]["selector"]["matchLabels"],
                                    &service["metadata"]["labels"],
                                ) && m["spec"]["endpoints"]
                                    .as_sequence()
                                    .into_iter()
                                    .flatten()
                                    .any(|e| e["port"].as_str() == Some(port_name))
                            })
                    })
        });
        assert!(
            scraped,
            "{}: no ServiceMonitor scrapes its pods",
            name(deployment)
        );
    }
}

#[test]
fn the_keda_example_scales_a_processor_on_its_consumer_group() {
    let objects = objects();
    let scaled = of_kind(&objects, "ScaledObject");
    assert!(!scaled.is_empty(), "a KEDA ScaledObject example");
    let deployments = workloads(&objects);
    let auths = of_kind(&objects, "TriggerAuthentication");
    for object in scaled {
        let reference = &object["spec"]["scaleTargetRef"];
        let target = reference["name"].as_str().expect("target");
        // KEDA's default kind is Deployment: a StatefulSet must be named as one.
        let kind = reference["kind"].as_str().unwrap_or("Deployment");
        let deployment = deployments
            .iter()
            .find(|d| name(d) == target && d["kind"].as_str() == Some(kind))
            .unwrap_or_else(|| panic!("ScaledObject targets unknown {kind} {target}"));
        let args = strings(&deployment["spec"]["template"]["spec"]["containers"][0]["args"]);
        assert_eq!(args[0], "process", "{target} is a processor");
        let trigger = &object["spec"]["triggers"][0];
        assert_eq!(trigger["type"].as_str(), Some("kafka"));
        // The processor's default consumer group (docs/configuration.md: `formstream-<processor>`).
        assert_eq!(
            trigger["metadata"]["consumerGroup"].as_str(),
            Some(format!("formstream-{}", args[1]).as_str())
        );
        assert_eq!(trigger["metadata"]["topic"].as_str(), Some("responses"));
        if let Some(auth) = trigger["authenticationRef"]["name"].as_str() {
            assert!(
                auths.iter().any(|a| name(a) == auth),
                "TriggerAuthentication {auth} exists"
            );
        }
    }
}

#[test]
fn kustomization_lists_existing_files() {
    let kustomization = yaml_documents("deploy/k8s/kustomization.yaml")
        .pop()
        .expect("kustomization.yaml");
    for file in strings(&kustomization["resources"]) {
        assert!(
            repo_root().join("deploy/k8s").join(&file).is_file(),
            "kustomization.yaml lists missing {file}"
        );
    }
}

#[test]
fn the_topics_job_runs_topics_create_with_its_real_variables() {
    let objects = objects();
    let config_maps = config_maps(&objects);
    let jobs = of_kind(&objects, "Job");
    let job = jobs
        .iter()
        .find(|j| name(j) == "formstream-topics")
        .expect("a Job that creates the topics");
    let container = &job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(strings(&container["args"]), ["topics", "create"]);
    let help = CommandEnv::of(&["topics", "create"]);
    for variable in container_env(container, &config_maps).keys() {
        assert!(
            help.accepts(variable),
            "`formstream topics create` does not read {variable}"
        );
    }
}

#[test]
fn kubeconform_accepts_every_manifest() {
    let test = "ops::k8s::kubeconform_accepts_every_manifest";
    let missing = match std::process::Command::new("kubeconform").arg("-v").output() {
        Ok(_) => None,
        Err(e) => Some(format!(
            "kubeconform cannot run ({e}): go install github.com/yannh/kubeconform/cmd/kubeconform@v0.7.0"
        )),
    };
    if !runnable(test, missing) {
        return;
    }
    // Schemas for exactly the kinds the manifests use, from Go modules (no GitHub needed).
    let kinds: BTreeSet<(String, String)> = objects()
        .iter()
        .filter(|(file, _)| file != "kustomization.yaml")
        .map(|(file, o)| {
            let field = |f: &str| {
                o[f].as_str()
                    .unwrap_or_else(|| panic!("{file}: an object without {f}"))
                    .to_owned()
            };
            (field("apiVersion"), field("kind"))
        })
        .collect();
    // The Go modules the schemas come from (downloaded through Go's proxy when not cached yet):
    // only their absence (no `go`, no network on a first run) skips the test outside CI.
    let unavailable = k8s_schemas::MODULES
        .iter()
        .find_map(|module| k8s_schemas::module_dir(*module).err());
    if !runnable(test, unavailable) {
        return;
    }
    let schemas = tempfile::tempdir().expect("a schema folder");
    k8s_schemas::write_schemas(schemas.path(), &kinds).unwrap_or_else(|e| panic!("{e}"));
    let location = format!(
        "{}/{{{{ .ResourceKind }}}}{{{{ .KindSuffix }}}}.json",
        schemas.path().display()
    );
    let output = std::process::Command::new("kubeconform")
        .args([
            "-strict",
            "-summary",
            "-output",
            "text",
            "-skip",
            "Kustomization",
        ])
        .args(["-schema-location", &location])
        .arg(repo_root().join("deploy/k8s"))
        .output()
        .expect("running kubeconform");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "kubeconform:\n{report}");
    // Every object was validated against a schema, none skipped for lack of one (but the
    // Kustomization, which is kustomize's file, not an object of the cluster).
    let objects = objects().len();
    let valid = objects - 1;
    assert!(
        report.contains(&format!("{objects} resources found"))
            && report.contains(&format!("Valid: {valid},"))
            && report.contains("Skipped: 1"),
        "kubeconform validated fewer than the {valid} objects:\n{report}"
    );
}

#[test]
fn every_command_that_reads_the_organisations_file_is_given_the_one_config_map() {
    // The gateway refuses, and the sheets exporter dead-letters, a spreadsheet an organisation
    // does not own: both must read the same file, or one would let through what the other
    // refuses. Which commands read it is the binary's word (their --help), not this test's.
    const VARIABLE: &str = "FORMSTREAM_ORGANISATIONS_FILE";
    const CONFIG_MAP: &str = "formstream-organisations";
    let objects = objects();
    let config_maps = config_maps(&objects);
    let text = config_maps
        .get(CONFIG_MAP)
        .and_then(|c| c["data"]["organisations.toml"].as_str())
        .unwrap_or_else(|| panic!("ConfigMap {CONFIG_MAP} holds organisations.toml"));
    formstream_core::organisations::Organisations::parse(text, "deploy/k8s/organisations.yaml")
        .expect("the example organisations file is valid");
    let mut readers = Vec::new();
    for workload in workloads(&objects) {
        let pod = &workload["spec"]["template"];
        let container = &pod["spec"]["containers"][0];
        let args = strings(&container["args"]);
        let help = CommandEnv::of(&args.iter().map(String::as_str).collect::<Vec<_>>());
        if !help.vars.contains_key(VARIABLE) {
            continue;
        }
        let what = name(workload);
        readers.push(what.to_owned());
        let path = container_env(container, &config_maps)
            .get(VARIABLE)
            .cloned()
            .flatten()
            .unwrap_or_else(|| panic!("{what} reads {VARIABLE} but does not set it"));
        let volume = volume_for(pod, container, &path)
            .unwrap_or_else(|| panic!("{what}: {VARIABLE}={path} is on no volume"));
        assert_eq!(
            volume["configMap"]["name"].as_str(),
            Some(CONFIG_MAP),
            "{what}: {VARIABLE}={path}"
        );
        assert!(path.ends_with("/organisations.toml"), "{what}: {path}");
    }
    readers.sort();
    assert_eq!(readers, ["formstream-gateway", "formstream-sheets"]);
}

//! Every processor is one folder of the same shape (processors/README.md), registered in one line:
//! each `processors/<name>/` that is not a library has `Cargo.toml`, `README.md` and `src/lib.rs`
//! with its `impl Launch`, and one with a form action has it in `src/action.rs`, which its README
//! names; the binary's `src/processors.rs` registers it in one line, the binary
//! runs exactly those processors, and no other crate (the gateway, the core, the binary's
//! main.rs) names a processor crate.

use std::collections::BTreeSet;

use formstream_tests::deploy::{processors, read_repo_file, repo_root};

/// Folders of processors/ that are libraries the processors share, not processors.
const LIBRARIES: [&str; 2] = ["runtime", "notify"];

fn processor_folders() -> BTreeSet<String> {
    let dir = repo_root().join("processors");
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.is_dir())
        .filter_map(|path| path.file_name()?.to_str().map(str::to_owned))
        .filter(|name| !LIBRARIES.contains(&name.as_str()))
        .collect()
}

fn crate_of(folder: &str) -> String {
    format!("formstream_{}", folder.replace('-', "_"))
}

#[test]
fn every_processor_folder_has_the_same_files_and_one_registration_line() {
    let folders = processor_folders();
    let registrations = read_repo_file("src/processors.rs");
    let mut problems = Vec::new();
    for folder in &folders {
        for file in ["Cargo.toml", "README.md", "src/lib.rs"] {
            if !repo_root()
                .join("processors")
                .join(folder)
                .join(file)
                .is_file()
            {
                problems.push(format!("processors/{folder}/{file} is missing"));
            }
        }
        let lib =
            std::fs::read_to_string(repo_root().join(format!("processors/{folder}/src/lib.rs")))
                .unwrap_or_default();
        if !lib.contains("impl Launch for ") {
            problems.push(format!(
                "processors/{folder}/src/lib.rs has no `impl Launch`"
            ));
        }
        if lib.contains("fn form_action()") {
            let action = format!("processors/{folder}/src/action.rs");
            if !repo_root().join(&action).is_file() {
                problems.push(format!(
                    "{action} is missing (the processor has a form action)"
                ));
            }
            let readme = read_repo_file(&format!("processors/{folder}/README.md"));
            if !readme.contains("src/action.rs") {
                problems.push(format!(
                    "processors/{folder}/README.md does not point at its form action (src/action.rs)"
                ));
            }
        }
        let line = format!("Registration::of::<{}::", crate_of(folder));
        if registrations.matches(&line).count() != 1 {
            problems.push(format!(
                "src/processors.rs does not register {folder} in one line"
            ));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    let registered: BTreeSet<String> = processors().into_iter().collect();
    assert_eq!(
        registered, folders,
        "`formstream process` runs exactly the processor folders"
    );
}

#[test]
fn no_other_crate_names_a_processor() {
    let folders = processor_folders();
    let mut places = Vec::new();
    for file in [
        "src/main.rs",
        "ingest/Cargo.toml",
        "core/Cargo.toml",
        "ingest/src",
        "core/src",
    ] {
        let path = repo_root().join(file);
        let texts: Vec<(String, String)> = if path.is_dir() {
            walk(&path)
        } else {
            vec![(file.to_owned(), read_repo_file(file))]
        };
        for (name, text) in texts {
            for folder in &folders {
                let (snake, kebab) = (crate_of(folder), format!("formstream-{folder}"));
                if text.contains(&snake) || text.contains(&kebab) {
                    places.push(format!("{name} names {folder}"));
                }
            }
        }
    }
    assert!(places.is_empty(), "{places:#?}");
}

fn walk(dir: &std::path::Path) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).expect("a readable folder") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else if let Ok(text) = std::fs::read_to_string(&path) {
            found.push((path.display().to_string(), text));
        }
    }
    found
}

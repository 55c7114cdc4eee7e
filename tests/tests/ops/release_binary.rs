//! deploy/split-debuginfo.sh ships the binary without its debug sections and keeps backtraces
//! useful: the split binary has no DWARF but keeps its symbol table, so a backtrace names every
//! function; with the split-off debug file beside it, the backtrace has file and line again.

use std::path::Path;
use std::process::Command;

use formstream_tests::deploy::repo_root;
use formstream_tests::runtime::formstream_binary;

/// The ELF section names of `binary` (`readelf`, like `objcopy`, comes with binutils).
fn sections(binary: &Path) -> Vec<String> {
    let output = Command::new("readelf")
        .args(["-SW"])
        .arg(binary)
        .output()
        .expect("running readelf");
    assert!(output.status.success(), "readelf failed");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let (_, rest) = line.split_once(']')?;
            rest.split_whitespace().next().map(str::to_owned)
        })
        .collect()
}

/// The backtrace of an error the binary reports at once, without a broker: an API keys file
/// that does not exist.
fn backtrace(binary: &Path) -> String {
    let output = Command::new(binary)
        .args(["gateway", "--api-keys-file", "/nonexistent/api-keys.toml"])
        .args([
            "--listen",
            "127.0.0.1:0",
            "--kafka-bootstrap",
            "127.0.0.1:1",
        ])
        .env("RUST_BACKTRACE", "1")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .expect("running formstream");
    assert!(!output.status.success(), "a missing keys file must fail");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        stderr.contains("Stack backtrace:"),
        "no backtrace: {stderr}"
    );
    stderr
}

#[test]
fn the_split_binary_keeps_names_and_its_debug_file_keeps_lines() {
    let original = formstream_binary();
    let out = tempfile::tempdir().expect("a temporary directory");
    let status = Command::new(repo_root().join("deploy/split-debuginfo.sh"))
        .arg(&original)
        .arg(out.path())
        .status()
        .expect("running deploy/split-debuginfo.sh");
    assert!(status.success());
    let split = out.path().join("formstream");
    let debug = out.path().join("formstream.debug");

    let names = sections(&split);
    // (`.debug_gdb_scripts` is loaded data, not DWARF: it stays.)
    for dwarf in [".debug_info", ".debug_line", ".debug_str", ".debug_ranges"] {
        assert!(!names.iter().any(|s| s == dwarf), "{dwarf} in {names:?}");
    }
    assert!(names.iter().any(|s| s == ".symtab"), "{names:?}");
    assert!(names.iter().any(|s| s == ".gnu_debuglink"), "{names:?}");
    let size = |path: &Path| std::fs::metadata(path).expect("a file").len();
    assert!(size(&split) < size(&original));

    // The debug file beside the binary: frames have their source lines.
    let with_lines = backtrace(&split);
    assert!(
        with_lines.contains(" at ") && with_lines.contains(".rs:"),
        "{with_lines}"
    );

    // Without it, the same frames by name only.
    std::fs::remove_file(&debug).expect("removing the debug file");
    let names_only = backtrace(&split);
    assert!(names_only.contains("formstream::"), "{names_only}");
    assert!(!names_only.contains(".rs:"), "{names_only}");
}

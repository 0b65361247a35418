//! Replays every input in tests/fuzz_regressions/<target>/ (crashes cargo-fuzz found, and
//! seeds) through that target's fuzz property, without libFuzzer.

use std::path::Path;

#[test]
fn replay_fuzz_regressions() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions");
    for (target, property) in wsgate::fuzz::TARGETS {
        let dir = root.join(target);
        let mut n = 0;
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (every fuzz target keeps its seeds here)",
                dir.display()
            )
        }) {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            // A panic names the input: the property's own message says what broke.
            eprintln!("replaying {}", path.display());
            property(&data);
            n += 1;
        }
        assert!(n > 0, "no regression inputs in {}", dir.display());
    }
}

#[test]
fn every_fuzz_target_is_replayed() {
    // fuzz/Cargo.toml lists the targets cargo-fuzz builds; each must have a property here,
    // or its crashes could not be kept as regressions. (A target whose property lives in a
    // module of its own, like `path`, is replayed by that module's tests.)
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/Cargo.toml"))
            .unwrap();
    let names: Vec<&str> = wsgate::fuzz::TARGETS.iter().map(|(n, _)| *n).collect();
    for line in manifest.lines() {
        if let Some(name) = line
            .strip_prefix("name = \"")
            .and_then(|l| l.strip_suffix('"'))
            && name != "wsgate-fuzz"
            && name != "path"
        {
            assert!(
                names.contains(&name),
                "fuzz target {name} has no replay in wsgate::fuzz::TARGETS"
            );
        }
    }
}

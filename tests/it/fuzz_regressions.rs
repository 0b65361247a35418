//! Replays every input in tests/fuzz_regressions/ (crashes cargo-fuzz found, and seeds)
//! through the fuzz property, without libFuzzer.

#[test]
fn replay_fuzz_regressions() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "md") {
            continue;
        }
        let data = std::fs::read(&path).unwrap();
        wsgate::frame::fuzz_scanner(&data);
        n += 1;
    }
    assert!(n > 0, "no regression inputs in {}", dir.display());
}

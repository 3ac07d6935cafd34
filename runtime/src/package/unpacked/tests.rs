use crate::package::layer::{self, UnpackLimits};
use crate::package::{Store, StoreError};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

/// A tar+gzip layer of `files` (path, size), each file all zeros: a
/// gzip bomb when the sizes are large.
fn zeros_layer(files: &[(&str, u64)]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let mut tar = tar::Builder::new(gz);
    for (path, size) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(*size);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut header, path, std::io::repeat(0).take(*size))
            .unwrap();
    }
    tar.into_inner().unwrap().finish().unwrap()
}

use std::io::Read as _;

fn sample_tree(dir: &Path) {
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("a.txt"), "ay").unwrap();
    std::fs::write(dir.join("sub/c.txt"), "sea").unwrap();
}

/// Everything left in the store's `unpacked/` besides lock files.
fn unpacked_names(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root.join("unpacked"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    names.sort();
    names
}

#[test]
fn a_gzip_bomb_is_refused_quickly_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let limits = UnpackLimits {
        total_bytes: 1 << 20,
        file_bytes: 1 << 20,
        entries: 50,
    };
    let store = Store::open(dir.path()).unwrap().with_unpack_limits(limits);

    // One file of 64 MiB of zeros: a few dozen kilobytes of gzip.
    let bomb = zeros_layer(&[("big.bin", 64 << 20)]);
    assert!(bomb.len() < 256 << 10, "{}", bomb.len());
    let digest = store.put(&bomb).unwrap();
    let started = Instant::now();
    let err = store.unpacked(&digest).unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(matches!(err, StoreError::Unpack { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains(digest.as_str()), "{message}");
    assert!(message.contains("big.bin"), "{message}");
    assert!(message.contains("1048576"), "{message}");
    assert_eq!(unpacked_names(dir.path()), Vec::<String>::new());

    // Many files under the per-file limit that together pass the total.
    let many: Vec<(String, u64)> = (0..40).map(|i| (format!("f{i}"), 64 << 10)).collect();
    let many: Vec<(&str, u64)> = many.iter().map(|(p, s)| (p.as_str(), *s)).collect();
    let digest = store.put(&zeros_layer(&many)).unwrap();
    let err = store.unpacked(&digest).unwrap_err();
    assert!(err.to_string().contains("more than 1048576 bytes"), "{err}");
    assert_eq!(unpacked_names(dir.path()), Vec::<String>::new());

    // More entries than allowed.
    let names: Vec<String> = (0..60).map(|i| format!("e{i}")).collect();
    let tiny: Vec<(&str, u64)> = names.iter().map(|n| (n.as_str(), 1)).collect();
    let digest = store.put(&zeros_layer(&tiny)).unwrap();
    let err = store.unpacked(&digest).unwrap_err();
    assert!(err.to_string().contains("more than 50 entries"), "{err}");
    assert_eq!(unpacked_names(dir.path()), Vec::<String>::new());

    // Within the limits, the same kind of layer unpacks.
    let digest = store.put(&zeros_layer(&[("ok.bin", 512 << 10)])).unwrap();
    let tree = store.unpacked(&digest).unwrap();
    assert_eq!(
        std::fs::metadata(tree.join("ok.bin")).unwrap().len(),
        512 << 10
    );
}

#[test]
fn a_large_file_unpacks_with_the_default_limits() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let digest = store.put(&zeros_layer(&[("data.bin", 32 << 20)])).unwrap();
    let tree = store.unpacked(&digest).unwrap();
    assert_eq!(
        std::fs::metadata(tree.join("data.bin")).unwrap().len(),
        32 << 20
    );
}

#[test]
fn concurrent_unpacks_of_one_layer_share_one_complete_tree() {
    let source = tempfile::tempdir().unwrap();
    sample_tree(source.path());
    // Enough files that unpacking takes a while.
    for i in 0..300 {
        std::fs::write(source.path().join(format!("f{i:03}.txt")), vec![b'x'; 4096]).unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let digest = store.put(&layer::pack_dir(source.path()).unwrap()).unwrap();
    let root = dir.path().to_path_buf();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let root = root.clone();
            let digest = digest.clone();
            std::thread::spawn(move || {
                let store = Store::open(&root).unwrap();
                let tree = store.unpacked(&digest).unwrap();
                // Whatever a caller is handed is complete.
                assert_eq!(
                    std::fs::read_to_string(tree.join("sub/c.txt")).unwrap(),
                    "sea"
                );
                for i in 0..300 {
                    assert_eq!(
                        std::fs::metadata(tree.join(format!("f{i:03}.txt")))
                            .unwrap()
                            .len(),
                        4096
                    );
                }
                tree
            })
        })
        .collect();
    let trees: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(trees.iter().all(|t| *t == trees[0]));
    assert_eq!(unpacked_names(dir.path()), vec![digest.hex().to_string()]);
}

#[test]
fn a_tampered_tree_is_unpacked_again() {
    let source = tempfile::tempdir().unwrap();
    sample_tree(source.path());
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let digest = store.put(&layer::pack_dir(source.path()).unwrap()).unwrap();
    let tree = store.unpacked(&digest).unwrap();

    // A file wiped.
    std::fs::remove_file(tree.join("sub/c.txt")).unwrap();
    assert_eq!(store.unpacked(&digest).unwrap(), tree);
    assert_eq!(
        std::fs::read_to_string(tree.join("sub/c.txt")).unwrap(),
        "sea"
    );

    // A file truncated.
    std::fs::write(tree.join("a.txt"), "").unwrap();
    store.unpacked(&digest).unwrap();
    assert_eq!(std::fs::read_to_string(tree.join("a.txt")).unwrap(), "ay");

    // A file added.
    std::fs::write(tree.join("extra"), "planted").unwrap();
    store.unpacked(&digest).unwrap();
    assert!(!tree.join("extra").exists());

    // The record itself damaged or pointing at another layer.
    let record = tree.parent().unwrap().join("contents.json");
    std::fs::write(&record, "{}").unwrap();
    store.unpacked(&digest).unwrap();
    assert!(
        std::fs::read_to_string(&record)
            .unwrap()
            .contains(digest.as_str())
    );
    assert_eq!(unpacked_names(dir.path()), vec![digest.hex().to_string()]);
}

#[test]
fn a_corrupt_layer_blob_is_refused_while_unpacking() {
    let source = tempfile::tempdir().unwrap();
    sample_tree(source.path());
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let layer = layer::pack_dir(source.path()).unwrap();
    let digest = store.put(&layer).unwrap();
    // Same archive, one more byte at the end: still unpacks, wrong digest.
    let mut tampered = layer.clone();
    tampered.push(0);
    std::fs::File::create(store.blob_path(&digest))
        .unwrap()
        .write_all(&tampered)
        .unwrap();
    let err = store.unpacked(&digest).unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert_eq!(unpacked_names(dir.path()), Vec::<String>::new());
}

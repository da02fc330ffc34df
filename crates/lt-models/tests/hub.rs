//! Downloads from the hub, against a loopback server that answers as the hub's `resolve`
//! endpoint does (a one-byte range with the file's etag, commit and size, then the bytes from an
//! offset): the file lands in the cache laid out as the real one, a corrupted transfer is refused
//! and removed, an interrupted one is an error and resumes on the next call.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use lt_models::hub::{cached, fetch, HubOptions};
use sha2::Digest;

const REPO: &str = "timm/resnet8.test";
const FILE: &str = "model.safetensors";
const COMMIT: &str = "89abcdef0123456789abcdef0123456789abcdef";

/// What the server sends for the file.
struct Served {
    /// The file's bytes as the hub has them (the etag is their SHA-256).
    body: Vec<u8>,
    /// The bytes actually sent (a corrupted transfer when they differ from `body`).
    sent: Vec<u8>,
    /// Full downloads (from offset 0) cut after half the bytes, then served whole.
    cuts_left: AtomicUsize,
    /// Every request: its path, `Range` header and `Authorization` header.
    log: Mutex<Vec<(String, String, String)>>,
}

impl Served {
    fn new(body: Vec<u8>) -> Arc<Self> {
        Arc::new(Self {
            sent: body.clone(),
            body,
            cuts_left: AtomicUsize::new(0),
            log: Mutex::new(Vec::new()),
        })
    }

    fn etag(&self) -> String {
        hex::encode(sha2::Sha256::digest(&self.body))
    }

    /// The response to a GET of `path` with `range` (`bytes=A-` or `bytes=A-B`).
    fn reply(&self, path: &str, range: &str, auth: &str) -> Vec<u8> {
        self.log.lock().unwrap().push((path.to_string(), range.to_string(), auth.to_string()));
        if path != format!("/{REPO}/resolve/main/{FILE}") {
            return b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec();
        }
        let len = self.sent.len();
        let (start, end) = match range.strip_prefix("bytes=").and_then(|r| r.split_once('-')) {
            Some((a, b)) => (a.parse::<usize>().unwrap(), b.parse::<usize>().map(|b| b + 1).unwrap_or(len)),
            None => (0, len),
        };
        let mut chunk = &self.sent[start..end];
        let whole = end - start;
        let full = start == 0 && end == len;
        if full && self.cuts_left.load(Ordering::SeqCst) > 0 {
            self.cuts_left.fetch_sub(1, Ordering::SeqCst);
            chunk = &chunk[..whole / 2];
        }
        let mut out = format!(
            "HTTP/1.1 206 Partial Content\r\nContent-Length: {whole}\r\nContent-Range: bytes {start}-{}/{}\r\n\
             etag: \"{}\"\r\nx-repo-commit: {COMMIT}\r\nConnection: close\r\n\r\n",
            end - 1,
            self.body.len(),
            self.etag()
        )
        .into_bytes();
        out.extend_from_slice(chunk);
        out
    }
}

/// Serves `served` on a loopback port; returns its address.
fn serve(served: Arc<Served>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut req = Vec::new();
            let mut buf = [0u8; 4096];
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&req);
            let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
            let header = |name: &str| {
                text.lines()
                    .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)))
                    .map(|(_, v)| v.trim().to_string())
                    .unwrap_or_default()
            };
            let _ = s.write_all(&served.reply(&path, &header("range"), &header("authorization")));
            let _ = s.flush();
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    });
    format!("http://{addr}")
}

fn bytes(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// Settings of this environment that would keep the tests' requests from the loopback server
/// (offline mode, or a proxy the HTTP client takes from the environment), named.
fn check_environment() {
    for var in [
        "HF_HUB_OFFLINE",
        "HF_TOKEN",
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "all_proxy",
    ] {
        let set = std::env::var(var).is_ok_and(|v| !v.is_empty() && v != "0");
        assert!(!set, "{var} is set: these tests download from a loopback server; unset it to run them");
    }
}

fn options(cache: &Path, endpoint: &str) -> HubOptions {
    check_environment();
    HubOptions { cache_dir: Some(cache.to_path_buf()), endpoint: Some(endpoint.into()), ..Default::default() }
}

fn offline(cache: &Path) -> HubOptions {
    HubOptions { cache_dir: Some(cache.to_path_buf()), offline: true, ..Default::default() }
}

/// Every file under `dir`, relative, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_download_lands_in_the_cache_as_the_hub_lays_it_out() {
    let served = Served::new(bytes(300_000));
    // A trailing slash on the address is dropped, as the hub's own clients do.
    let url = format!("{}/", serve(served.clone()));
    // The token is the file beside the cache folder, as `huggingface-cli login` writes it.
    let home = tempfile::tempdir().unwrap();
    std::fs::write(home.path().join("token"), "hf_loopback\n").unwrap();
    let cache = home.path().join("hub");
    let path = fetch(REPO, FILE, &options(&cache, &url)).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), served.body);
    let repo = cache.join("models--timm--resnet8.test");
    assert_eq!(path, repo.join("snapshots").join(COMMIT).join(FILE));
    assert_eq!(std::fs::read_to_string(repo.join("refs/main")).unwrap().trim(), COMMIT);
    assert!(repo.join("blobs").join(served.etag()).is_file());
    // The first request asks for one byte (the file's identity and size), the second for all.
    let log = served.log.lock().unwrap().clone();
    assert_eq!(log.iter().map(|(_, r, _)| r.as_str()).collect::<Vec<_>>(), ["bytes=0-0", "bytes=0-"]);
    assert!(log.iter().all(|(_, _, auth)| auth == "Bearer hf_loopback"), "{log:?}");
    // Later calls, online or offline, read the cache and send nothing.
    assert_eq!(fetch(REPO, FILE, &offline(&cache)).unwrap(), path);
    assert_eq!(fetch(REPO, FILE, &options(&cache, &url)).unwrap(), path);
    assert_eq!(served.log.lock().unwrap().len(), 2);
}

#[test]
fn a_corrupted_download_is_refused_and_removed() {
    let body = bytes(100_000);
    let mut sent = body.clone();
    sent[50_000] ^= 0xff;
    let served = Arc::new(Served { sent, ..Arc::into_inner(Served::new(body)).unwrap() });
    let url = serve(served.clone());
    let cache = tempfile::tempdir().unwrap();
    let msg = fetch(REPO, FILE, &options(cache.path(), &url)).unwrap_err().to_string();
    for part in [REPO, FILE, url.as_str(), "SHA-256", &served.etag(), "removed"] {
        assert!(msg.contains(part), "{part:?} missing from: {msg}");
    }
    // Neither the link nor the blob stays: nothing in the cache names the bad bytes.
    assert_eq!(cached(REPO, FILE, &offline(cache.path())), None);
    let left = files(cache.path());
    assert!(!left.iter().any(|f| f.contains("snapshots") || f.ends_with(&served.etag())), "{left:?}");
}

#[test]
fn an_interrupted_download_fails_and_the_next_call_resumes_it() {
    let served = Served::new(bytes(200_000));
    served.cuts_left.store(1, Ordering::SeqCst);
    let url = serve(served.clone());
    let cache = tempfile::tempdir().unwrap();
    let opts = options(cache.path(), &url);
    let msg = fetch(REPO, FILE, &opts).unwrap_err().to_string();
    assert!(msg.contains(REPO) && msg.contains(&url), "{msg}");
    assert_eq!(cached(REPO, FILE, &offline(cache.path())), None, "a cut download must not be cached");
    let path = fetch(REPO, FILE, &opts).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), served.body);
    // The second call asked only for the bytes the first did not get.
    let log = served.log.lock().unwrap().clone();
    assert_eq!(log.last().unwrap().1, format!("bytes={}-", served.body.len() / 2), "{log:?}");
}

#[test]
fn a_file_the_hub_does_not_have_is_an_error_naming_it_and_the_address() {
    let served = Served::new(bytes(10));
    let url = serve(served);
    let cache = tempfile::tempdir().unwrap();
    let err = fetch(REPO, "pytorch_model.bin", &options(cache.path(), &url)).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("pytorch_model.bin") && msg.contains(&url), "{msg}");
}

/// A snapshot entry whose blob is gone (removed as corrupt through another snapshot that shared
/// it) works again after the next download, which writes the blob its link names (blobs are
/// named by their content).
#[test]
fn a_link_to_a_removed_blob_is_downloaded_again() {
    let served = Served::new(bytes(50_000));
    let url = serve(served.clone());
    let cache = tempfile::tempdir().unwrap();
    let path = fetch(REPO, FILE, &options(cache.path(), &url)).unwrap();
    let blob = cache.path().join("models--timm--resnet8.test/blobs").join(served.etag());
    std::fs::remove_file(&blob).unwrap();
    assert!(path.symlink_metadata().is_ok() && !path.exists(), "a dangling link");
    assert_eq!(fetch(REPO, FILE, &options(cache.path(), &url)).unwrap(), path);
    assert_eq!(std::fs::read(&path).unwrap(), served.body);
}

/// A snapshot entry made by hand that links out of the cache is neither checked nor removed,
/// whatever its target holds.
#[cfg(unix)]
#[test]
fn a_link_out_of_the_cache_is_left_alone() {
    let served = Served::new(bytes(20_000));
    let url = serve(served.clone());
    let cache = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let outside = elsewhere.path().join(served.etag());
    std::fs::write(&outside, b"the user's own file").unwrap();
    // No ref names the commit, so the cache lookup misses and the file is downloaded; the hub
    // client then keeps the entry it finds at the commit's path.
    let snapshot = cache.path().join("models--timm--resnet8.test/snapshots").join(COMMIT);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::os::unix::fs::symlink(&outside, snapshot.join(FILE)).unwrap();
    let path = fetch(REPO, FILE, &options(cache.path(), &url)).unwrap();
    assert_eq!(path, snapshot.join(FILE));
    assert_eq!(std::fs::read(&outside).unwrap(), b"the user's own file");
}

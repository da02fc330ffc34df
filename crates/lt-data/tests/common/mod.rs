//! Writers of small data files in the real formats, and a loopback HTTP server.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// One CIFAR-10 batch file: `records` records, label = record % 10, pixels derived from record.
pub fn cifar10_batch(records: usize, offset: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(records * 3073);
    for r in 0..records {
        let g = r + offset;
        out.push((g % 10) as u8);
        out.extend((0..3072).map(|p| ((g * 31 + p) % 256) as u8));
    }
    out
}

/// One CIFAR-100 file: coarse = fine / 5, fine = record % 100.
pub fn cifar100_file(records: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(records * 3074);
    for r in 0..records {
        let fine = (r % 100) as u8;
        out.push(fine / 5);
        out.push(fine);
        out.extend((0..3072).map(|p| ((r * 7 + p) % 256) as u8));
    }
    out
}

/// Writes the CIFAR-10 binary layout into `dir`.
pub fn write_cifar10_dir(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for b in 0..5 {
        std::fs::write(dir.join(format!("data_batch_{}.bin", b + 1)), cifar10_batch(10_000, b * 10_000))
            .unwrap();
    }
    std::fs::write(dir.join("test_batch.bin"), cifar10_batch(10_000, 50_000)).unwrap();
    let names = "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n";
    std::fs::write(dir.join("batches.meta.txt"), names).unwrap();
}

/// A `.tar.gz` with the given `(member path, bytes)` entries.
pub fn tar_gz(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut ar = tar::Builder::new(gz);
    for (name, bytes) in entries {
        let mut h = tar::Header::new_gnu();
        h.set_size(bytes.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        ar.append_data(&mut h, name, bytes.as_slice()).unwrap();
    }
    ar.into_inner().unwrap().finish().unwrap()
}

/// The CIFAR-10 binary archive layout (`cifar-10-batches-bin/...`).
pub fn cifar10_archive() -> Vec<u8> {
    let mut entries: Vec<(String, Vec<u8>)> = (0..5)
        .map(|b| {
            (format!("cifar-10-batches-bin/data_batch_{}.bin", b + 1), cifar10_batch(10_000, b * 10_000))
        })
        .collect();
    entries.push(("cifar-10-batches-bin/test_batch.bin".into(), cifar10_batch(10_000, 50_000)));
    entries
        .push(("cifar-10-batches-bin/batches.meta.txt".into(), b"a\nb\nc\nd\ne\nf\ng\nh\ni\nj\n".to_vec()));
    let refs: Vec<(&str, Vec<u8>)> = entries.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    tar_gz(&refs)
}

/// An IDX file of unsigned bytes.
pub fn idx_bytes(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8, 0, 0x08, dims.len() as u8];
    for d in dims {
        out.extend_from_slice(&d.to_be_bytes());
    }
    out.extend_from_slice(data);
    out
}

/// Gzip-compresses bytes.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// What the loopback server does for a path.
#[derive(Clone)]
pub enum Reply {
    /// 200 with the body.
    Body(Vec<u8>),
    /// 200 announcing the full length, then the connection closes after `cut` bytes.
    Cut(Vec<u8>, usize),
    /// 404.
    Missing,
}

/// A loopback HTTP/1.1 server answering GET requests from a table; returns its base URL and the
/// log of requested paths.
pub fn serve(routes: Vec<(String, Reply)>) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = [0u8; 4096];
            let mut req = Vec::new();
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let text = String::from_utf8_lossy(&req);
            let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
            log2.lock().unwrap().push(path.clone());
            let reply =
                routes.iter().find(|(p, _)| *p == path).map(|(_, r)| r.clone()).unwrap_or(Reply::Missing);
            match reply {
                Reply::Body(b) => {
                    let _ = write!(
                        s,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        b.len()
                    );
                    let _ = s.write_all(&b);
                }
                Reply::Cut(b, cut) => {
                    let _ = write!(
                        s,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        b.len()
                    );
                    let _ = s.write_all(&b[..cut]);
                    let _ = s.flush();
                }
                Reply::Missing => {
                    let _ =
                        write!(s, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                }
            }
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    });
    (format!("http://{addr}"), log)
}

/// MD5 hex of bytes.
pub fn md5_hex(bytes: &[u8]) -> String {
    use md5::Digest;
    hex::encode(md5::Md5::digest(bytes))
}

//! Fixtures the rate-limit tests and `benches/worker/` share (the bench
//! includes this file by path): a real `redis-server`, and group IDs spread
//! evenly over the partitions.

use std::time::{Duration, Instant};

/// `n` group IDs, `name(i)` for rising `i`, as many in every partition as
/// `n` allows: a replica reaches its partition share only when the work is
/// spread like its partitions.
pub fn spread_groups(n: usize, partitions: i32, name: impl Fn(u64) -> String) -> Vec<String> {
    let per = n.div_ceil(partitions as usize);
    let mut count = vec![0usize; partitions as usize];
    let mut out = Vec::with_capacity(n);
    let mut i = 0;
    while out.len() < n {
        let g = name(i);
        i += 1;
        let p = mutebridge::key_partition(g.as_bytes(), partitions) as usize;
        if count[p] < per {
            count[p] += 1;
            out.push(g);
        }
    }
    out
}

/// Whether `redis-server` can be started here.
pub fn redis_installed() -> bool {
    std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// A real `redis-server` (Debian's package; `.ci/run` installs it) on a
/// free loopback port, without persistence; killed when dropped.
pub struct RedisServer {
    pub port: u16,
    child: Option<std::process::Child>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        assert!(
            redis_installed(),
            "redis-server is not installed: apt-get install redis-server (.ci/run does)"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = RedisServer {
            port,
            child: None,
            dir: tempfile::tempdir().unwrap(),
        };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (again) on the same port and waits until it answers PING.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("redis-server is not installed: apt-get install redis-server (.ci/run does)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.ping() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: gone at once, like a crashed or unreachable Redis.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn ping(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

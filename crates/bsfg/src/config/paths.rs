//! Paths in a zone's configuration file are relative to that file.
//!
//! Why: a node started from another working directory (a systemd unit, a
//! shell elsewhere) must find the same certificates and the same store; a
//! store found somewhere else would be a new, empty zone. Absolute paths
//! are kept as they are. A `server_bin` without a directory (a command
//! name such as `nats-server`) is looked up on PATH, so it is kept too.

use super::ZoneConfig;
use std::path::{Path, PathBuf};

impl ZoneConfig {
    /// Resolves every relative path against `base`, the directory of the
    /// configuration file.
    pub fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        let tls = &mut self.tls;
        for p in [&mut tls.ca, &mut tls.cert, &mut tls.key]
            .into_iter()
            .flatten()
        {
            resolve(p);
        }
        let nats = &mut self.nats;
        for p in [&mut nats.password_file, &mut nats.creds_file]
            .into_iter()
            .flatten()
        {
            resolve(p);
        }
        resolve(&mut nats.store_dir);
        if let Some(bin) = &mut nats.server_bin
            && bin.components().count() > 1
        {
            resolve(bin);
        }
        if let Some(p) = &mut self.commit.key_index_path {
            resolve(p);
        }
        for u in &mut self.upstreams {
            resolve(&mut u.spool_dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_follow_the_file_and_absolute_ones_stay() {
        let text = "zone = \"z1\"\nlisten = \"127.0.0.1:1\"\nops_listen = \"127.0.0.1:2\"\n\
                    [tls]\nmode = \"mtls\"\nca = \"certs/ca.pem\"\ncert = \"/etc/bsfg/z1.pem\"\n\
                    key = \"certs/z1.key\"\n\
                    [nats]\nstore_dir = \"data/js\"\nserver_bin = \"nats-server\"\n\
                    [[upstreams]]\npeer = \"p\"\nurl = \"https://p\"\nconsumer = \"c\"\n\
                    spool_dir = \"spool\"\n";
        let mut config: ZoneConfig = toml::from_str(text).unwrap();
        config.resolve_paths(Path::new("/srv/site/z1"));
        let tls = &config.tls;
        assert_eq!(
            tls.ca.as_deref(),
            Some(Path::new("/srv/site/z1/certs/ca.pem"))
        );
        assert_eq!(tls.cert.as_deref(), Some(Path::new("/etc/bsfg/z1.pem")));
        assert_eq!(
            tls.key.as_deref(),
            Some(Path::new("/srv/site/z1/certs/z1.key"))
        );
        assert_eq!(config.nats.store_dir, Path::new("/srv/site/z1/data/js"));
        assert_eq!(
            config.nats.server_bin.as_deref(),
            Some(Path::new("nats-server"))
        );
        assert_eq!(
            config.upstreams[0].spool_dir,
            Path::new("/srv/site/z1/spool")
        );
        assert_eq!(
            config.key_index_path(),
            Path::new("/srv/site/z1/data/key-index.z1.kix"),
            "the key index follows the store"
        );
    }
}

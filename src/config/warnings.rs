//! What a valid config may still do wrong with its secrets: a key secret written inline in the
//! file, or a `secret_file` that is a symlink or that its group or other users can read.
//! `check-config` prints these and `serve` logs them; neither refuses the config.

use std::path::Path;

use super::Config;

/// One line per unsafe secret, naming the pool, key and file (never the secret).
pub fn warnings(config: &Config) -> Vec<String> {
    let mut found = Vec::new();
    for pool in &config.pools {
        for key in &pool.keys {
            let at = format!("pools.{}.keys.{}", pool.name, key.id);
            match (&key.secret_env, &key.secret_file) {
                (None, None) => found.push(format!(
                    "{at}: the secret is written inline in the config; use secret_env or secret_file"
                )),
                (_, Some(file)) => found.extend(file_warning(&at, file)),
                _ => {}
            }
        }
    }
    found
}

/// Why `file` is not a safe place for a secret, if it is not.
fn file_warning(at: &str, file: &Path) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let shown = file.display();
    let link = std::fs::symlink_metadata(file).ok()?;
    if link.file_type().is_symlink() {
        return Some(format!(
            "{at}: secret_file {shown} is a symlink; whoever can change the link chooses the secret"
        ));
    }
    let mode = link.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then(|| {
        format!(
            "{at}: secret_file {shown} has mode {mode:o}; group and others can read it (chmod 600)"
        )
    })
}

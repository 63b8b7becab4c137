//! The Lua scripts of `lua/`, built once at start-up in two forms (ARCHITECTURE.md, "The
//! store's scripts"): one Redis Functions library holding every script as a function, loaded
//! once per Redis (`FUNCTION LOAD`, called with `FCALL`), and, for a Redis without Functions
//! (before 7.0, or an ACL that forbids them), each script prefixed with `lua/lib.lua` for
//! `EVALSHA`. Both run the same Lua: each script's body starts with lib.lua's `begin`.

use redis::Script;

use super::Op;

const LIB: &str = include_str!("../../lua/lib.lua");
const ROTATION_LIB: &str = include_str!("../../lua/rotation_lib.lua");

/// A script of `lua/`.
#[derive(Clone, Copy)]
struct Source {
    file: &'static str,
    body: &'static str,
    /// It uses `lua/rotation_lib.lua`.
    rotation: bool,
    /// None: the whole body runs at every call. Some(f): the body only defines (its functions
    /// are made once, when Redis loads the library), and its function `f(KEYS, ARGV)` is the
    /// call (`lua/select.lua`'s `select_call`).
    entry: Option<&'static str>,
}

macro_rules! lua {
    ($file:literal, $rotation:literal) => {
        lua!($file, $rotation, None)
    };
    ($file:literal, $rotation:literal, $entry:expr) => {
        Source {
            file: $file,
            body: include_str!(concat!("../../lua/", $file)),
            rotation: $rotation,
            entry: $entry,
        }
    };
}

/// Every script, in the order of [`Scripts::all`].
const SOURCES: [Source; 17] = [
    lua!("select.lua", false, Some("select_call")),
    lua!("report.lua", false),
    lua!("report_batch.lua", false),
    lua!("set_state.lua", false),
    lua!("set_weight.lua", false),
    lua!("set_group.lua", false),
    lua!("set_canary.lua", false),
    lua!("reset.lua", false),
    lua!("settle.lua", false),
    lua!("snapshot.lua", false),
    lua!("sync.lua", false),
    lua!("rotation_start.lua", true),
    lua!("rotation_control.lua", true),
    lua!("rotation_lease.lua", true),
    lua!("rotation_write.lua", true),
    lua!("rotation_stats.lua", true),
    lua!("rotation_read.lua", true),
];

/// What a script's body runs after: the call's start (lib.lua `begin`, and for a rotation
/// script rotation_lib.lua `rotation_begin`).
fn start(rotation: bool) -> &'static str {
    if rotation {
        "begin(KEYS) rotation_begin()"
    } else {
        "begin(KEYS)"
    }
}

impl Source {
    /// The `EVALSHA` form: the libraries, the call's start, the body (and its entry's call).
    fn eval_form(&self) -> String {
        let libs = if self.rotation {
            format!("{LIB}\n{ROTATION_LIB}")
        } else {
            LIB.to_string()
        };
        let (start, body) = (start(self.rotation), self.body);
        match self.entry {
            None => format!("{libs}\n{start}\n{body}"),
            Some(f) => format!("{libs}\n{start}\n{body}\nreturn {f}(KEYS, ARGV)\n"),
        }
    }

    /// Its part of the library: the function `name`, and for a body that defines, the
    /// definitions (in a block of their own: their locals stay the script's).
    fn library_form(&self, name: &str) -> String {
        let (start, body) = (start(self.rotation), self.body);
        match self.entry {
            // The body's KEYS and ARGV are the function's arguments; its top-level `return`s
            // end the function.
            None => format!(
                "redis.register_function('{name}', function(KEYS, ARGV)\n{start}\n{body}\nend)\n"
            ),
            Some(f) => format!(
                "do\n{body}\nredis.register_function('{name}', function(KEYS, ARGV)\n{start}\n\
                 return {f}(KEYS, ARGV)\nend)\nend\n"
            ),
        }
    }
}

/// The version of the library: the first 12 hex digits of the SHA1 of every source. Function
/// names carry it, so replicas of two versions (a rolling upgrade) each call their own code.
fn version() -> String {
    let mut all = format!("{LIB}\n{ROTATION_LIB}");
    for src in SOURCES {
        all.push('\n');
        all.push_str(src.body);
    }
    Script::new(&all).get_hash()[..12].to_string()
}

/// The function that runs `lua/<file>` in the library of `version`.
fn function_name(version: &str, file: &str) -> String {
    format!("kg_{version}_{}", file.trim_end_matches(".lua"))
}

/// The name `FCALL` calls `lua/<file>` by in this build's library (None: no such script).
/// Tests use it to find the script calls Redis logged.
pub fn function_of(file: &str) -> Option<String> {
    SOURCES
        .iter()
        .any(|src| src.file == file)
        .then(|| function_name(&version(), file))
}

/// The SHA1 `EVALSHA` calls `lua/<file>` by (None: no such script). Tests use it as
/// [`function_of`].
pub fn sha_of(file: &str) -> Option<String> {
    Scripts::new()
        .all_named()
        .into_iter()
        .find(|(f, _)| *f == file)
        .map(|(_, lua)| lua.script.get_hash().to_string())
}

/// One script in both forms.
pub(crate) struct Lua {
    /// For `EVALSHA`: lib.lua (and rotation_lib.lua), then the script.
    pub script: Script,
    /// Its function's name in [`Library`].
    pub function: String,
}

/// The Functions library: every script of `lua/` as one function, lib.lua's definitions made
/// once when Redis loads it (a script call then runs only its own body: BENCHMARKS.md, "Redis
/// Functions, not EVALSHA").
pub(crate) struct Library {
    pub name: String,
    pub code: String,
}

fn library(version: &str) -> Library {
    let name = format!("keygate_{version}");
    let mut code = format!("#!lua name={name}\n{LIB}\n{ROTATION_LIB}\n");
    for src in SOURCES {
        code.push_str(&src.library_form(&function_name(version, src.file)));
    }
    Library { name, code }
}

/// Every script the Redis store runs; built once (hashing each source), shared by all calls.
pub(crate) struct Scripts {
    pub select: Lua,
    pub report: Lua,
    pub report_batch: Lua,
    pub set_state: Lua,
    pub set_weight: Lua,
    pub set_group: Lua,
    pub set_canary: Lua,
    pub reset: Lua,
    pub settle: Lua,
    pub snapshot: Lua,
    pub sync: Lua,
    pub rotation_start: Lua,
    pub rotation_control: Lua,
    pub rotation_lease: Lua,
    pub rotation_write: Lua,
    pub rotation_stats: Lua,
    pub rotation_read: Lua,
    pub library: Library,
}

impl Scripts {
    pub fn new() -> Scripts {
        let version = version();
        // In the order of SOURCES (the array's length is checked by the compiler, the order by
        // the test below).
        let built = SOURCES.map(|src| Lua {
            script: Script::new(&src.eval_form()),
            function: function_name(&version, src.file),
        });
        let [select, report, report_batch, set_state, set_weight, set_group, set_canary, reset, settle, snapshot, sync, rotation_start, rotation_control, rotation_lease, rotation_write, rotation_stats, rotation_read] =
            built;
        Scripts {
            select,
            report,
            report_batch,
            set_state,
            set_weight,
            set_group,
            set_canary,
            reset,
            settle,
            snapshot,
            sync,
            rotation_start,
            rotation_control,
            rotation_lease,
            rotation_write,
            rotation_stats,
            rotation_read,
            library: library(&version),
        }
    }

    /// The one script that applies `op` (its ARGV in `redis/ops.rs`, its reply in
    /// `redis/reply.rs`).
    pub fn for_op(&self, op: &Op<'_>) -> &Lua {
        match op {
            Op::Report(_) => &self.report,
            Op::Successes(_) => &self.report_batch,
            Op::SetState { .. } => &self.set_state,
            Op::SetWeight { .. } => &self.set_weight,
            Op::SetGroup { .. } => &self.set_group,
            Op::SetCanary { .. } => &self.set_canary,
            Op::Reset { .. } => &self.reset,
            Op::Settle(_) => &self.settle,
            Op::RotationStart(_) => &self.rotation_start,
            Op::RotationControl { .. } => &self.rotation_control,
            Op::RotationLease { .. } => &self.rotation_lease,
            Op::RotationWrite(_) => &self.rotation_write,
            Op::RotationStats { .. } => &self.rotation_stats,
            Op::RotationRead => &self.rotation_read,
        }
    }

    /// Every script with its file name in `lua/`.
    fn all_named(&self) -> Vec<(&'static str, &Lua)> {
        SOURCES.iter().map(|src| src.file).zip(self.all()).collect()
    }

    pub fn all(&self) -> [&Lua; 17] {
        [
            &self.select,
            &self.report,
            &self.report_batch,
            &self.set_state,
            &self.set_weight,
            &self.set_group,
            &self.set_canary,
            &self.reset,
            &self.settle,
            &self.snapshot,
            &self.sync,
            &self.rotation_start,
            &self.rotation_control,
            &self.rotation_lease,
            &self.rotation_write,
            &self.rotation_stats,
            &self.rotation_read,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_is_a_function_of_the_library_named_after_its_version() {
        let s = Scripts::new();
        let v = version();
        assert_eq!(s.library.name, format!("keygate_{v}"));
        assert!(s
            .library
            .code
            .starts_with(&format!("#!lua name=keygate_{v}\n")));
        for lua in s.all() {
            assert!(
                lua.function.starts_with(&format!("kg_{v}_")),
                "{}",
                lua.function
            );
            let registered = format!("redis.register_function('{}',", lua.function);
            assert_eq!(
                s.library.code.matches(&registered).count(),
                1,
                "{registered}"
            );
        }
        assert_eq!(function_of("select.lua"), Some(format!("kg_{v}_select")));
        assert_eq!(function_of("nothing.lua"), None);
        for (file, lua) in s.all_named() {
            assert_eq!(lua.function, function_name(&v, file));
            assert_eq!(sha_of(file).as_deref(), Some(lua.script.get_hash()));
        }
    }
}

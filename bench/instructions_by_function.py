#!/usr/bin/env python3
# bench/instructions_by_function.py DIR...: keygate's instructions per request on its way, by
# function (inclusive: the function and what it calls), from the target directories
# bench/instructions.sh wrote (kg-embedded, kg-redis), side by side. Inlined functions show 0:
# their instructions count in their caller. BENCHMARKS.md, "Where a request's CPU goes".
import glob, re, subprocess, sys
def load(d):
    n = int(open(f"{d}/requests.txt").read().split()[1])
    dump = sorted(glob.glob(f"{d}/cg.out*"))[-1]
    out = subprocess.run(["callgrind_annotate", "--auto=no", "--inclusive=yes", "--threshold=100", dump], capture_output=True, text=True).stdout
    fns = {}
    total = 0
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(.*)$", line)
        if not m: continue
        v = int(m.group(1).replace(",", "")); rest = m.group(2)
        if rest.startswith("PROGRAM TOTALS"): total = v; continue
        rest = re.sub(r" \[[^\]]*\]$", "", rest)
        fn = rest.split(":", 1)[1] if ":" in rest else rest
        fns[fn] = max(fns.get(fn, 0), v)
    return n, total, fns
rows = [
 ("hyper server: request head", r"^hyper::proto::h1::conn::Conn<I,B,T>::poll_read_head$"),
 ("axum Router::call_with_state", r"^axum::routing::Router<S>::call_with_state$"),
 ("handler prepare_and_run (all)", r"^keygate::proxy::prepare_and_run::\{\{closure\}\}$"),
 ("  request_id", r"^keygate::proxy::route::request_id$"),
 ("  authenticate (sha256)", r"^keygate::proxy::auth::authenticate$"),
 ("  read_body", r"^keygate::proxy::request::read_body::\{\{closure\}\}$"),
 ("  inspect (json head)", r"^keygate::proxy::request::inspect$"),
 ("  check_allowed (models)", r"^keygate::proxy::models::check_allowed$"),
 ("  upstream_uri", r"^keygate::proxy::forward::upstream_uri$"),
 ("  run_keys", r"^keygate::proxy::run_keys::\{\{closure\}\}$"),
 ("    store select", r"^<keygate::store::.*as keygate::store::KeyStore>::select::\{\{closure\}\}$"),
 ("    upstream_headers", r"^keygate::proxy::forward::upstream_headers$"),
 ("    hyper client send_request", r"^hyper_util::client::legacy::client::Client<C,B>::send_request::\{\{closure\}\}$"),
 ("    classify", r"^keygate::upstream::classify::classify$"),
 ("    record_attempt", r"^keygate::metrics::.*record_attempt$"),
 ("    report_success", r"^keygate::proxy::report::report_success$"),
 ("    downstream_headers", r"^keygate::proxy::forward::downstream_headers$"),
 ("    scrub_headers", r"^keygate::upstream::scrub::Scrubber::scrub_headers$"),
 ("    keygate_headers", r"^keygate::proxy::outcome::keygate_headers$"),
 ("    set_header", r"^keygate::proxy::forward::set_header$"),
 ("usage Envelope::parse", r"^keygate::usage::Envelope::parse$"),
 ("response body: ObservedBody::poll_next", r"^<keygate::proxy::body::ObservedBody as futures_core::stream::Stream>::poll_next$"),
 ("response body end: finish (usage)", r"^keygate::proxy::body::ObservedBody::finish$"),
 ("hyper server: poll_flush", r"^hyper::proto::h1::dispatch::Dispatcher<D,Bs,I,T>::poll_flush$"),
 ("watchdog: serve_connection", r"^keygate::server::conn::serve_connection::\{\{closure\}\}$"),
 ("tokio: park/unpark", r"^tokio::runtime::scheduler::multi_thread::worker::Context::park$"),
 ("malloc", r"^_rjem_malloc$"),
 ("free", r"^_rjem_sdallocx$"),
 ("realloc", r"^_rjem_realloc$"),
 ("memcpy", r"^__memcpy_avx_unaligned_erms$"),
 ("SipHash", r"^core::hash::BuildHasher::hash_one$"),
]
profs = [load(d) for d in sys.argv[1:]]
print(f"| {'what':40} | " + " | ".join(f"{d.rstrip('/').split('/')[-2] + '/' + d.rstrip('/').split('/')[-1]:>8}" for d in sys.argv[1:]) + " |")
print("|---|" + "---:|" * len(profs))
print(f"| {'TOTAL instructions per request':40} | " + " | ".join(f"{t/n:8.0f}" for n,t,_ in profs) + " |")
for label, rx in rows:
    vals = []
    for n, t, fns in profs:
        v = max([c for f, c in fns.items() if re.search(rx, f)] or [0])
        vals.append(v / n)
    print(f"| {label:40} | " + " | ".join(f"{v:8.0f}" for v in vals) + " |")

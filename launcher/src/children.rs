//! Command lines of the children: `pagedserve-shard` per shard and one `pagedserve-router`.
//! Under tensor parallelism a "shard" is a group of T processes: rank 0 serves gRPC (the
//! router knows only it), ranks 1.. follow it over the group's rendezvous port.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::args::ServeArgs;
use crate::error::{LaunchError, Result};
use crate::supervise::ChildSpec;

pub const SHARD_BIN: &str = "pagedserve-shard";
pub const ROUTER_BIN: &str = "pagedserve-router";

/// Environment variables that size a shard's compute thread pools (candle/rayon, OpenMP).
const THREAD_ENV: [&str; 2] = ["RAYON_NUM_THREADS", "OMP_NUM_THREADS"];

/// What every child needs to know about the deployment.
#[derive(Debug, Clone)]
pub struct Plan {
    pub bin_dir: PathBuf,
    pub model: PathBuf,
    pub served_name: String,
    pub shard_ports: Vec<u16>,
    pub threads_per_shard: usize,
    /// Ranks per group (1: no tensor parallelism).
    pub tp_size: usize,
    /// Rendezvous port of each group (empty when `tp_size` is 1).
    pub tp_ports: Vec<u16>,
    /// Extra environment of every shard process (e.g. where NCCL is, for tensor parallelism).
    pub shard_env: Vec<(String, String)>,
}

/// The directory holding the child binaries: `--bin-dir`, else this executable's directory.
pub fn bin_dir(explicit: Option<&Path>) -> Result<PathBuf> {
    if let Some(dir) = explicit {
        return Ok(dir.to_path_buf());
    }
    let exe = std::env::current_exe().map_err(LaunchError::CurrentExe)?;
    exe.parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| LaunchError::CurrentExe(std::io::Error::other("executable has no parent")))
}

/// Path of a child binary, checked to exist so a missing build is a clear error.
pub fn binary(dir: &Path, name: &'static str) -> Result<PathBuf> {
    let path = dir.join(name);
    if path.is_file() {
        Ok(path)
    } else {
        Err(LaunchError::BinaryMissing { name, path })
    }
}

fn common_env(args: &ServeArgs) -> Vec<(String, String)> {
    match args.hf_token.as_deref().filter(|t| !t.is_empty()) {
        Some(token) => vec![("HF_TOKEN".into(), token.into())],
        None => vec![],
    }
}

/// Shard `shard_id` (rank 0 of its group under tensor parallelism), serving gRPC on `port`.
pub fn shard_spec(args: &ServeArgs, plan: &Plan, shard_id: usize, port: u16) -> Result<ChildSpec> {
    rank_spec(args, plan, shard_id, 0, Some(port))
}

/// Rank `rank` (1..) of group `shard_id`: follows its rank 0, serves no gRPC.
pub fn follower_spec(
    args: &ServeArgs,
    plan: &Plan,
    shard_id: usize,
    rank: usize,
) -> Result<ChildSpec> {
    rank_spec(args, plan, shard_id, rank, None)
}

fn rank_spec(
    args: &ServeArgs,
    plan: &Plan,
    shard_id: usize,
    rank: usize,
    port: Option<u16>,
) -> Result<ChildSpec> {
    let mut argv: Vec<OsString> = vec!["--model".into(), plan.model.clone().into_os_string()];
    let mut flag = |name: &str, value: String| {
        argv.push(format!("--{name}").into());
        argv.push(value.into());
    };
    flag("served-model-name", plan.served_name.clone());
    flag("host", "127.0.0.1".into());
    if let Some(port) = port {
        flag("port", port.to_string());
    }
    flag("shard-id", shard_id.to_string());
    // Group d's rank r on GPU d*T + r (with T = 1: shard i on GPU i).
    let gpu = shard_id * plan.tp_size + rank;
    flag("device", shard_device(&args.device, gpu));
    if plan.tp_size > 1 {
        flag("tp-size", plan.tp_size.to_string());
        flag("tp-rank", rank.to_string());
        if let Some(tp_port) = plan.tp_ports.get(shard_id) {
            flag("tp-addr", format!("127.0.0.1:{tp_port}"));
        }
    }
    flag("threads", plan.threads_per_shard.to_string());
    flag(
        "shutdown-timeout-secs",
        args.shutdown_timeout_secs.to_string(),
    );
    let optional = [
        ("block-size", args.block_size.map(|v| v.to_string())),
        ("num-kv-blocks", args.num_kv_blocks.map(|v| v.to_string())),
        (
            "kv-cache-memory-mb",
            args.kv_cache_memory_mb.map(|v| v.to_string()),
        ),
        (
            "max-batch-tokens",
            args.max_batch_tokens.map(|v| v.to_string()),
        ),
        ("max-num-seqs", args.max_num_seqs.map(|v| v.to_string())),
        ("scheduling-policy", args.scheduling_policy.clone()),
        ("max-model-len", args.max_model_len.map(|v| v.to_string())),
        // Every rank of a tensor-parallel group alike (each checks the others agree).
        (
            "kv-cache-dtype",
            args.kv_cache_dtype.map(|d| d.name().to_string()),
        ),
        (
            "gpu-memory-utilization",
            args.gpu_memory_utilization.map(|v| v.to_string()),
        ),
        ("load-format", args.load_format.clone()),
        ("model-shape", args.model_shape.clone()),
    ];
    for (name, value) in optional {
        if let Some(value) = value {
            flag(name, value);
        }
    }
    if args.enforce_eager {
        argv.push("--enforce-eager".into());
    }
    // On is the shard's default too: only turning it off needs saying.
    if !args.prefix_caching() {
        argv.push("--no-enable-prefix-caching".into());
    }
    if args.no_async_scheduling {
        argv.push("--no-async-scheduling".into());
    }
    let mut env = common_env(args);
    env.extend(plan.shard_env.iter().cloned());
    let threads = plan.threads_per_shard.to_string();
    env.extend(
        THREAD_ENV
            .iter()
            .map(|k| ((*k).to_owned(), threads.clone())),
    );
    Ok(ChildSpec {
        name: match rank {
            0 => format!("shard-{shard_id}"),
            r => format!("shard-{shard_id}-tp{r}"),
        },
        program: binary(&plan.bin_dir, SHARD_BIN)?,
        args: argv,
        env,
        // The shard gets everything by flag; the key is the router's business only.
        env_remove: vec!["API_KEY".into()],
    })
}

/// One GPU per shard process: `cuda` puts process `gpu` on GPU `gpu`; `auto` is resolved by
/// each shard (GPU `shard_id` modulo the GPUs found, else the CPU); `cuda:N` and `cpu` are
/// passed as given.
fn shard_device(device: &str, gpu: usize) -> String {
    match device {
        "cuda" => format!("cuda:{gpu}"),
        d => d.to_string(),
    }
}

pub fn router_spec(args: &ServeArgs, plan: &Plan) -> Result<ChildSpec> {
    let mut argv: Vec<OsString> = vec!["--model".into(), plan.model.clone().into_os_string()];
    for (name, value) in [
        ("served-model-name", plan.served_name.clone()),
        ("host", args.host.clone()),
        ("port", args.port.to_string()),
    ] {
        argv.push(format!("--{name}").into());
        argv.push(value.into());
    }
    if let Some(n) = args.max_waiting_requests {
        argv.push("--max-waiting-requests".into());
        argv.push(n.to_string().into());
    }
    for port in &plan.shard_ports {
        argv.push("--shard".into());
        argv.push(format!("http://127.0.0.1:{port}").into());
    }
    let mut env = common_env(args);
    let mut env_remove = vec![];
    // By environment, not argv: a key on the command line is visible to every local user.
    match args.api_key.as_deref().filter(|k| !k.is_empty()) {
        Some(key) => env.push(("API_KEY".into(), key.into())),
        None => env_remove.push("API_KEY".into()),
    }
    Ok(ChildSpec {
        name: "router".into(),
        program: binary(&plan.bin_dir, ROUTER_BIN)?,
        args: argv,
        env,
        env_remove,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(extra: &[&str]) -> ServeArgs {
        let argv = ["pagedserve"].into_iter().chain(extra.iter().copied());
        match crate::args::Cli::try_parse_from(argv).map(crate::args::Cli::into_command) {
            Ok(crate::args::Command::Serve(s)) => s,
            Ok(other) => panic!("not serve: {other:?}"),
            Err(e) => panic!("{e}"),
        }
    }

    /// A plan whose bin dir (empty stand-ins for the child binaries) is removed with it.
    struct TestPlan {
        plan: Plan,
        _dir: tempfile::TempDir,
    }

    impl std::ops::Deref for TestPlan {
        type Target = Plan;
        fn deref(&self) -> &Plan {
            &self.plan
        }
    }

    impl std::ops::DerefMut for TestPlan {
        fn deref_mut(&mut self) -> &mut Plan {
            &mut self.plan
        }
    }

    fn plan(tag: &str) -> TestPlan {
        let dir = tempfile::Builder::new()
            .prefix(&format!("pagedserve-children-{tag}-"))
            .tempdir()
            .expect("dir");
        for name in [SHARD_BIN, ROUTER_BIN] {
            std::fs::write(dir.path().join(name), b"").expect("write");
        }
        TestPlan {
            plan: Plan {
                bin_dir: dir.path().to_path_buf(),
                model: "/m/x.gguf".into(),
                served_name: "x".into(),
                shard_ports: vec![7001, 7002],
                threads_per_shard: 3,
                tp_size: 1,
                tp_ports: vec![],
                shard_env: vec![],
            },
            _dir: dir,
        }
    }

    fn strings(spec: &ChildSpec) -> Vec<String> {
        spec.args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    fn value_of(argv: &[String], flag: &str) -> Option<String> {
        let at = argv.iter().position(|a| a == flag)?;
        argv.get(at + 1).cloned()
    }

    #[test]
    fn one_gpu_per_shard() {
        assert_eq!(shard_device("cuda", 0), "cuda:0");
        assert_eq!(shard_device("cuda", 3), "cuda:3");
        assert_eq!(shard_device("cuda:1", 3), "cuda:1");
        assert_eq!(shard_device("auto", 2), "auto");
        assert_eq!(shard_device("cpu", 2), "cpu");
    }

    #[test]
    fn shard_gets_its_id_port_and_only_given_options() {
        let a = args(&[
            "--num-kv-blocks",
            "64",
            "--max-num-seqs",
            "8",
            "--schedule-policy",
            "lof",
        ]);
        let spec = shard_spec(&a, &plan("shard"), 1, 7002).expect("spec");
        let argv = strings(&spec);
        assert_eq!(
            value_of(&argv, "--scheduling-policy").as_deref(),
            Some("lof")
        );
        assert_eq!(value_of(&argv, "--port").as_deref(), Some("7002"));
        assert_eq!(value_of(&argv, "--shard-id").as_deref(), Some("1"));
        assert_eq!(value_of(&argv, "--num-kv-blocks").as_deref(), Some("64"));
        assert_eq!(value_of(&argv, "--max-num-seqs").as_deref(), Some("8"));
        assert_eq!(value_of(&argv, "--host").as_deref(), Some("127.0.0.1"));
        assert!(
            value_of(&argv, "--kv-cache-memory-mb").is_none(),
            "absent options use the shard's default"
        );
        assert_eq!(value_of(&argv, "--threads").as_deref(), Some("3"));
        assert!(spec.env.contains(&("RAYON_NUM_THREADS".into(), "3".into())));
        assert_eq!(spec.name, "shard-1");
        assert!(value_of(&argv, "--max-model-len").is_none());
    }

    #[test]
    fn every_rank_gets_max_model_len() {
        // vLLM's spelling of the step budget reaches the shard under the shard's name.
        let a = args(&[
            "--max-model-len",
            "8192",
            "--max-num-batched-tokens",
            "4096",
        ]);
        let leader = strings(&shard_spec(&a, &plan("len"), 0, 7001).expect("spec"));
        assert_eq!(
            value_of(&leader, "--max-model-len").as_deref(),
            Some("8192")
        );
        assert_eq!(
            value_of(&leader, "--max-batch-tokens").as_deref(),
            Some("4096")
        );
        // Tensor-parallel followers size their buffers from it too.
        let mut p = plan("len-tp");
        p.tp_size = 2;
        p.tp_ports = vec![9101];
        let follower = strings(&follower_spec(&a, &p, 0, 1).expect("spec"));
        assert_eq!(
            value_of(&follower, "--max-model-len").as_deref(),
            Some("8192")
        );
        // The router learns the limit from the shards, not from a flag.
        let router = strings(&router_spec(&a, &plan("len-router")).expect("spec"));
        assert!(value_of(&router, "--max-model-len").is_none());
    }

    #[test]
    fn every_rank_gets_the_kv_cache_dtype() {
        let a = args(&["--kv-cache-dtype", "fp8"]);
        let leader = strings(&shard_spec(&a, &plan("kvd"), 0, 7001).expect("spec"));
        assert_eq!(
            value_of(&leader, "--kv-cache-dtype").as_deref(),
            Some("fp8_e4m3")
        );
        let mut p = plan("kvd-tp");
        p.tp_size = 2;
        p.tp_ports = vec![9102];
        let follower = strings(&follower_spec(&a, &p, 0, 1).expect("spec"));
        assert_eq!(
            value_of(&follower, "--kv-cache-dtype").as_deref(),
            Some("fp8_e4m3"),
            "a follower stores its heads' K/V as the leader does"
        );
        let bf16 = args(&["--kv-cache-dtype", "bfloat16"]);
        let argv = strings(&shard_spec(&bf16, &plan("kvd-bf16"), 0, 7001).expect("spec"));
        assert_eq!(value_of(&argv, "--kv-cache-dtype").as_deref(), Some("bf16"));
        // Not given: the shard's default (auto), and the router never hears of it.
        let none = strings(&shard_spec(&args(&[]), &plan("kvd-none"), 0, 7001).expect("spec"));
        assert!(value_of(&none, "--kv-cache-dtype").is_none());
        let router = strings(&router_spec(&a, &plan("kvd-router")).expect("spec"));
        assert!(value_of(&router, "--kv-cache-dtype").is_none());
    }

    /// How often the shard's command line carries `off` for launcher flags `extra`, where
    /// `on` (the shard's default) must never be passed.
    fn off_flag_passes(off: &str, on: &str, extra: &[&str]) -> usize {
        let spec = shard_spec(&args(extra), &plan("onoff"), 0, 7001).expect("spec");
        let argv = strings(&spec);
        assert!(
            !argv.iter().any(|a| a == on),
            "on is the shard's default: {argv:?}"
        );
        argv.iter().filter(|a| *a == off).count()
    }

    #[test]
    fn shard_gets_no_enable_prefix_caching_only_when_turned_off() {
        let flag = "--no-enable-prefix-caching";
        let passes = |extra: &[&str]| off_flag_passes(flag, "--enable-prefix-caching", extra);
        assert_eq!(passes(&[]), 0);
        assert_eq!(passes(&["--enable-prefix-caching"]), 0);
        assert_eq!(passes(&[flag]), 1);
        assert_eq!(passes(&[flag, "--enable-prefix-caching"]), 0);
        // Tensor-parallel followers get the same command line (they run no engine).
        let mut p = plan("apc-tp");
        p.tp_size = 2;
        p.tp_ports = vec![9101];
        let follower = follower_spec(&args(&[flag]), &p, 0, 1).expect("spec");
        assert!(strings(&follower).iter().any(|a| a == flag));
    }

    #[test]
    fn shard_gets_no_async_scheduling_only_when_turned_off() {
        let flag = "--no-async-scheduling";
        let passes = |extra: &[&str]| off_flag_passes(flag, "--async-scheduling", extra);
        assert_eq!(passes(&[]), 0);
        assert_eq!(passes(&["--async-scheduling"]), 0);
        assert_eq!(passes(&[flag]), 1);
        assert_eq!(passes(&[flag, "--async-scheduling"]), 0);
    }

    #[test]
    fn tensor_parallel_ranks_get_their_gpu_and_the_group_port() {
        let a = args(&["--device", "cuda", "--tensor-parallel-size", "2"]);
        let mut p = plan("tp");
        p.tp_size = 2;
        p.tp_ports = vec![9101, 9102];
        let leader = strings(&shard_spec(&a, &p, 1, 7002).expect("spec"));
        assert_eq!(value_of(&leader, "--device").as_deref(), Some("cuda:2"));
        assert_eq!(value_of(&leader, "--tp-rank").as_deref(), Some("0"));
        assert_eq!(value_of(&leader, "--tp-size").as_deref(), Some("2"));
        assert_eq!(
            value_of(&leader, "--tp-addr").as_deref(),
            Some("127.0.0.1:9102")
        );
        assert_eq!(value_of(&leader, "--port").as_deref(), Some("7002"));
        let spec = follower_spec(&a, &p, 1, 1).expect("spec");
        assert_eq!(spec.name, "shard-1-tp1");
        let follower = strings(&spec);
        assert_eq!(value_of(&follower, "--device").as_deref(), Some("cuda:3"));
        assert_eq!(value_of(&follower, "--tp-rank").as_deref(), Some("1"));
        assert_eq!(
            value_of(&follower, "--tp-addr").as_deref(),
            Some("127.0.0.1:9102")
        );
        assert!(
            value_of(&follower, "--port").is_none(),
            "followers serve no gRPC"
        );
        // Without tensor parallelism nothing changes.
        let plain =
            strings(&shard_spec(&args(&["--device", "cuda"]), &plan("dp"), 1, 7002).expect("spec"));
        assert_eq!(value_of(&plain, "--device").as_deref(), Some("cuda:1"));
        assert!(value_of(&plain, "--tp-size").is_none());
    }

    #[test]
    fn router_gets_every_shard_and_the_key_by_env() {
        let a = args(&[
            "--api-key",
            "s3cret",
            "--port",
            "8123",
            "--hf-token",
            "hf_x",
        ]);
        let spec = router_spec(&a, &plan("router")).expect("spec");
        let argv = strings(&spec);
        let shards: Vec<_> = argv
            .windows(2)
            .filter(|w| w[0] == "--shard")
            .map(|w| w[1].clone())
            .collect();
        assert_eq!(shards, ["http://127.0.0.1:7001", "http://127.0.0.1:7002"]);
        assert_eq!(value_of(&argv, "--port").as_deref(), Some("8123"));
        assert!(
            !argv.iter().any(|a| a.contains("s3cret")),
            "key never on the command line"
        );
        assert!(spec.env.contains(&("API_KEY".into(), "s3cret".into())));
        assert!(spec.env.contains(&("HF_TOKEN".into(), "hf_x".into())));
    }

    #[test]
    fn router_gets_the_waiting_limit_only_when_set() {
        let spec =
            router_spec(&args(&["--max-waiting-requests", "4096"]), &plan("w")).expect("spec");
        assert_eq!(
            value_of(&strings(&spec), "--max-waiting-requests").as_deref(),
            Some("4096")
        );
        let spec = router_spec(&args(&[]), &plan("w")).expect("spec");
        assert!(value_of(&strings(&spec), "--max-waiting-requests").is_none());
    }

    #[test]
    fn missing_binary_is_named() {
        let mut p = plan("missing");
        p.bin_dir = p.bin_dir.join("nowhere");
        let err = router_spec(&args(&[]), &p).expect_err("no binary there");
        assert!(err.to_string().contains(ROUTER_BIN), "{err}");
    }
}

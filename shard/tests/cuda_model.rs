//! The whole model on CUDA against the CPU backend's greedy tokens for the fixture prompts
//! (the CPU backend matches transformers exactly; `fixture.rs` asserts it), run through the
//! same continuously batched, chunked, paged driver as the CPU test. Skips without a CUDA
//! driver (CI); runs on the device machine through `scripts/gpu-check`.
//!
//! bf16 weights and activations move logits by a few tenths, so a near-tie of the CPU logits
//! may flip: the first divergence of each case must sit where the CPU's top-2 logits differ
//! by less than `TIE_MARGIN`, and before it every CUDA top-5 logit must be within
//! `LOGIT_TOL` of the CPU's.

mod common;

use common::{FIXTURE_BLOCKS, fixture_seqs, load_fixture, model_path, step};
use pagedserve_kernels::KvDtype;
use pagedserve_shard::backend::cuda::cuda_device_count;
use pagedserve_shard::model::{
    CausalLm, DeviceSampling, KvCacheDtype, LoadOptions, Picked, SeqChunk, load_model, open_source,
};

/// Largest CPU top-2 logit gap a bf16 rounding may flip.
const TIE_MARGIN: f32 = 0.5;
/// Largest |CUDA logit - CPU logit| over the CPU's top-5 ids before the first divergence.
const LOGIT_TOL: f32 = 1.0;
/// The same over an fp8 (e4m3) KV cache (`fp8_kv_cache_serves_the_fixture`).
const FP8_LOGIT_TOL: f32 = 2.0;

fn gpu() -> bool {
    match cuda_device_count() {
        Ok(n) if n > 0 => true,
        Ok(_) => {
            eprintln!("skipped: no CUDA device");
            false
        }
        Err(e) => {
            eprintln!("skipped: no CUDA driver ({e})");
            false
        }
    }
}

fn options(enforce_eager: bool) -> LoadOptions {
    let fixture = load_fixture();
    let mut opts = LoadOptions {
        model_path: model_path(&fixture.model),
        num_kv_blocks: Some(FIXTURE_BLOCKS),
        device: "cuda:0".into(),
        ..LoadOptions::default()
    };
    opts.gpu.enforce_eager = enforce_eager;
    opts.gpu.max_num_seqs = 8;
    opts
}

/// Runs the fixture on CUDA; returns each case's generated tokens.
fn run(enforce_eager: bool) -> Vec<Vec<u32>> {
    let fixture = load_fixture();
    let mut model = load_model(&options(enforce_eager)).expect("load the default model on CUDA");
    assert_eq!(model.info().device, "cuda:0");
    assert_eq!(model.info().dtype, "bf16");
    let mut seqs = fixture_seqs(&fixture);
    while step(model.as_mut(), &mut seqs, fixture.new_tokens) {}
    compare(
        &fixture,
        &seqs,
        &format!("eager={enforce_eager}"),
        LOGIT_TOL,
    )
}

/// Checks each case's tokens and logits against the CPU's: every CUDA top-5 logit within
/// `logit_tol` of the CPU's up to the first divergence, which must sit at a near-tie of the
/// CPU's logits (top-2 gap under `TIE_MARGIN`). Returns the generated tokens.
fn compare(
    fixture: &common::Fixture,
    seqs: &[common::Seq],
    label: &str,
    logit_tol: f32,
) -> Vec<Vec<u32>> {
    let mut out = Vec::new();
    for (n, (case, seq)) in fixture.cases.iter().zip(seqs).enumerate() {
        assert!(
            seq.logits.iter().flatten().all(|x| x.is_finite()),
            "{label} case {n}: finite logits"
        );
        let got = &seq.tokens[seq.prompt_len..];
        let same = got
            .iter()
            .zip(&case.generated_ids)
            .take_while(|(a, b)| a == b)
            .count();
        let mut worst = 0f32;
        for (top, logits) in case.top5.iter().zip(&seq.logits).take(same + 1) {
            for &(id, want) in top {
                worst = worst.max((logits[id as usize] - want).abs());
            }
        }
        println!(
            "{label} case {n}: {same}/{} tokens as on the CPU, max |top-5 logit diff| up to the \
             first divergence {worst:.4}",
            case.generated_ids.len()
        );
        assert!(
            worst <= logit_tol,
            "{label} case {n}: logits off by {worst}"
        );
        if same < case.generated_ids.len() {
            let top = &case.top5[same];
            let gap = top[0].1 - top[1].1;
            println!("{label} case {n}: diverges at {same}, CPU top-2 gap {gap:.4}");
            assert!(
                gap < TIE_MARGIN,
                "{label} case {n}: diverges at {same} where the CPU's top-2 gap is {gap} (not a \
                 near-tie)"
            );
        }
        out.push(got.to_vec());
    }
    out
}

#[test]
fn cuda_model_gives_the_cpu_greedy_tokens() {
    if !gpu() {
        return;
    }
    let graphs = run(false);
    let eager = run(true);
    assert_eq!(
        graphs, eager,
        "CUDA graphs and eager steps give the same tokens"
    );
}

/// `--kv-cache-dtype fp8`: the fixture through an e4m3 cache (RoPE + KV write as its own
/// kernel, the fp8 attention kernels), graphs and eager alike, held to the bf16 run's rule
/// with a wider logit tolerance. e4m3 keeps 3 mantissa bits (relative rounding up to 1/16), so
/// logits move further from the CPU's: on an H100 (2026-11-26/27, both fp8 decode kernels)
/// the largest top-5 difference before a divergence was 1.57 (bf16 cache: 0.31), and every
/// divergence sat at a CPU top-2 gap of 0.22 or less (two cases flip their first token, at
/// gaps 0.22 and 0.012).
#[test]
fn fp8_kv_cache_serves_the_fixture() {
    if !gpu() {
        return;
    }
    let fixture = load_fixture();
    let mut runs = Vec::new();
    for enforce_eager in [false, true] {
        let opts = LoadOptions {
            kv_cache_dtype: KvCacheDtype::Fp8E4m3,
            ..options(enforce_eager)
        };
        let mut source = open_source(&opts.model_path).expect("open the default model");
        let mut model = pagedserve_shard::backend::cuda::load_cuda(Some(source.as_mut()), &opts)
            .expect("load the default model on CUDA with an fp8 KV cache");
        assert_eq!(model.kv_dtype(), KvDtype::Fp8E4m3);
        assert_eq!(model.num_kv_blocks(), FIXTURE_BLOCKS, "as asked");
        let mut seqs = fixture_seqs(&fixture);
        while step(&mut model, &mut seqs, fixture.new_tokens) {}
        let label = format!("fp8 eager={enforce_eager}");
        runs.push(compare(&fixture, &seqs, &label, FP8_LOGIT_TOL));
    }
    assert_eq!(
        runs[0], runs[1],
        "CUDA graphs and eager steps give the same tokens"
    );
}

#[test]
fn device_greedy_sampling_matches_host_argmax() {
    if !gpu() {
        return;
    }
    let fixture = load_fixture();
    let mut model = load_model(&options(false)).expect("load on CUDA");
    assert!(model.samples_on_device());
    let prompt = fixture.cases[0].prompt_ids.clone();
    let table: Vec<u32> = (0..FIXTURE_BLOCKS as u32).collect();
    let batch = [SeqChunk {
        tokens: &prompt,
        start_pos: 0,
        block_table: &table[..prompt.len().div_ceil(16)],
        need_logits: true,
    }];
    let logits = model.forward(&batch).expect("forward");
    let greedy = DeviceSampling {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
        seed: 7,
        counter: 0,
    };
    let mut draw = |p: Option<DeviceSampling>| {
        model
            .forward_sampled(&batch, &[p])
            .expect("samples on device")
            .expect("forward_sampled")
    };
    let argmax = logits[0].iter().enumerate().fold(
        0,
        |best, (i, &x)| if x > logits[0][best] { i } else { best },
    );
    assert_eq!(draw(Some(greedy)), vec![Picked::Token(argmax as u32)]);
    // A sequence left to the host gets its logits back, equal to forward's.
    assert_eq!(draw(None), vec![Picked::Logits(logits[0].clone())]);
    // A seeded draw is reproducible and in the vocabulary.
    let hot = Some(DeviceSampling {
        temperature: 1.0,
        top_k: 50,
        top_p: 0.9,
        ..greedy
    });
    let (a, b) = (draw(hot), draw(hot));
    assert_eq!(a, b);
    assert!(matches!(a[0], Picked::Token(t) if (t as usize) < 49152));
}

/// Greedy tokens of the first fixture prompts over `steps` decode steps: synchronous steps
/// (`forward_sampled`), or launched steps that feed each decode its last draw on the device
/// (`launch`/`collect`, what the engine's overlapped steps run; the host's token is a 0
/// placeholder there).
fn greedy_tokens(model: &mut dyn CausalLm, overlapped: bool, steps: usize) -> Vec<Vec<u32>> {
    let fixture = load_fixture();
    let prompts: Vec<Vec<u32>> = fixture.cases[..4]
        .iter()
        .map(|c| c.prompt_ids[..c.prompt_ids.len().min(100)].to_vec())
        .collect();
    let per_seq = (100 + steps + 1).div_ceil(16);
    assert!(
        4 * per_seq <= FIXTURE_BLOCKS,
        "the tables fit the fixture's cache"
    );
    let tables: Vec<Vec<u32>> = (0..prompts.len())
        .map(|i| ((i * per_seq) as u32..((i + 1) * per_seq) as u32).collect())
        .collect();
    let params = |step: usize| -> Vec<DeviceSampling> {
        (0..prompts.len())
            .map(|_| DeviceSampling {
                counter: step as u64,
                ..DeviceSampling::GREEDY
            })
            .collect()
    };
    let mut out: Vec<Vec<u32>> = vec![Vec::new(); prompts.len()];
    let prefill: Vec<SeqChunk<'_>> = prompts
        .iter()
        .zip(&tables)
        .map(|(p, t)| SeqChunk {
            tokens: p,
            start_pos: 0,
            block_table: t,
            need_logits: true,
        })
        .collect();
    let placeholder = [0u32];
    let push = |out: &mut Vec<Vec<u32>>, tokens: Vec<u32>| {
        assert_eq!(tokens.len(), out.len());
        for (o, t) in out.iter_mut().zip(tokens) {
            o.push(t);
        }
    };
    match overlapped {
        true => model.launch(&prefill, &params(0), &[]).expect("launch"),
        false => {
            push(&mut out, draw_sync(model, &prefill, params(0)));
        }
    }
    for step in 1..=steps {
        let last: Vec<[u32; 1]> = out
            .iter()
            .map(|o| [o.last().copied().unwrap_or(0)])
            .collect();
        let batch: Vec<SeqChunk<'_>> = (0..prompts.len())
            .map(|i| SeqChunk {
                tokens: if overlapped { &placeholder } else { &last[i] },
                start_pos: prompts[i].len() + step - 1,
                block_table: &tables[i],
                need_logits: true,
            })
            .collect();
        if overlapped {
            let feeds: Vec<(usize, u32)> = (0..prompts.len()).map(|i| (i, i as u32)).collect();
            model.launch(&batch, &params(step), &feeds).expect("launch");
            let tokens = model.collect().expect("collect");
            push(&mut out, tokens);
        } else {
            push(&mut out, draw_sync(model, &batch, params(step)));
        }
    }
    if overlapped {
        let tokens = model.collect().expect("collect the last step");
        push(&mut out, tokens);
        assert!(model.collect().is_err(), "nothing left in flight");
    }
    out
}

/// One synchronous step drawn on the device.
fn draw_sync(
    model: &mut dyn CausalLm,
    batch: &[SeqChunk<'_>],
    params: Vec<DeviceSampling>,
) -> Vec<u32> {
    let params: Vec<Option<DeviceSampling>> = params.into_iter().map(Some).collect();
    model
        .forward_sampled(batch, &params)
        .expect("samples on device")
        .expect("forward_sampled")
        .into_iter()
        .map(|p| match p {
            Picked::Token(t) => t,
            Picked::Logits(_) => panic!("a greedy draw came back as logits"),
        })
        .collect()
}

/// Overlapped steps (`--async-scheduling`, on by default): a launched decode step reads its
/// input tokens from the last step's draws on the device, and gives exactly the tokens of
/// synchronous steps, with CUDA graphs and without.
#[test]
fn overlapped_launches_give_the_synchronous_tokens() {
    if !gpu() {
        return;
    }
    for enforce_eager in [false, true] {
        let mut model = load_model(&options(enforce_eager)).expect("load on CUDA");
        assert!(model.can_launch());
        let sync = greedy_tokens(model.as_mut(), false, 24);
        let overlapped = greedy_tokens(model.as_mut(), true, 24);
        println!("eager={enforce_eager}: first sequence {:?}", &sync[0][..8]);
        assert_eq!(overlapped, sync, "eager={enforce_eager}");
        // Distinct prompts give distinct answers: the placeholder 0 was really replaced.
        assert_ne!(sync[0], sync[1]);
    }
}

#[test]
fn dummy_llama3_8b_shape_loads_and_decodes() {
    if !gpu() {
        return;
    }
    let mut opts = LoadOptions {
        device: "cuda:0".into(),
        num_kv_blocks: Some(64),
        ..LoadOptions::default()
    };
    opts.gpu.dummy_shape = Some("llama3-8b".into());
    opts.gpu.max_num_seqs = 4;
    let mut model = load_model(&opts).expect("dummy llama3-8b");
    assert_eq!(model.info().vocab_size, 128256);
    let table: Vec<u32> = (0..8).collect();
    let prompt: Vec<u32> = (0..40).map(|i| i * 1000 + 7).collect();
    let logits = model
        .forward(&[SeqChunk {
            tokens: &prompt,
            start_pos: 0,
            block_table: &table,
            need_logits: true,
        }])
        .expect("forward");
    assert!(logits[0].iter().all(|x| x.is_finite()), "finite logits");
    let spread = logits[0].iter().fold(0f32, |m, x| m.max(x.abs()));
    assert!(spread > 0.0, "random weights give non-zero logits");
}

/// Values in [-1, 1] of a fixed sequence, as bf16 (what the GPU multiplies).
fn random_bf16(len: usize, seed: u64) -> Vec<half::bf16> {
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            half::bf16::from_f32((state >> 40) as f32 / (1u64 << 23) as f32 - 1.0)
        })
        .collect()
}

/// `y[rows, n] = x[rows, k] @ w[n, k]^T` in f64 from the bf16 inputs.
fn reference_gemm(x: &[half::bf16], w: &[half::bf16], rows: usize, n: usize, k: usize) -> Vec<f64> {
    let mut y = vec![0f64; rows * n];
    for r in 0..rows {
        let xr = &x[r * k..(r + 1) * k];
        for j in 0..n {
            let wj = &w[j * k..(j + 1) * k];
            y[r * n + j] = xr
                .iter()
                .zip(wj)
                .map(|(a, b)| f64::from(a.to_f32()) * f64::from(b.to_f32()))
                .sum();
        }
    }
    y
}

/// Runs `gemm` for each of `rows` on fresh random inputs and checks its output against the
/// f64 reference: within bf16 rounding (2^-8 relative, plus a little of the largest value for
/// another summation order) for bf16 outputs, within f32 accumulation error (tensor cores'
/// f32 sums are not exactly IEEE's, hence some slack) for f32 ones.
fn check_gemm(
    gemm: &pagedserve_shard::backend::cuda::Gemm,
    stream: &std::sync::Arc<cudarc::driver::CudaStream>,
    shape: pagedserve_shard::backend::cuda::GemmShape,
    w_host: &[half::bf16],
    w: &cudarc::driver::CudaSlice<half::bf16>,
    rows: &[usize],
    label: &str,
) {
    use cudarc::driver::DevicePtrMut;
    use pagedserve_shard::backend::cuda::OutType;
    let (n, k) = (shape.n, shape.k);
    for &m in rows {
        let x_host = random_bf16(m * k, 1000 + m as u64);
        let x = stream.clone_htod(&x_host).expect("upload x");
        let want = reference_gemm(&x_host, w_host, m, n, k);
        let got: Vec<f64> = match shape.out {
            OutType::Bf16 => {
                let mut y = stream.alloc_zeros::<half::bf16>(m * n).expect("alloc y");
                let yp = y.device_ptr_mut(stream).0;
                gemm.matmul(stream, &x, w, yp, shape.out, m, n, k)
                    .expect("bf16 GEMM");
                let y = stream.clone_dtoh(&y).expect("download y");
                y.iter().map(|v| f64::from(v.to_f32())).collect()
            }
            OutType::F32 => {
                let mut y = stream.alloc_zeros::<f32>(m * n).expect("alloc y");
                let yp = y.device_ptr_mut(stream).0;
                gemm.matmul(stream, &x, w, yp, shape.out, m, n, k)
                    .expect("f32 GEMM");
                let y = stream.clone_dtoh(&y).expect("download y");
                y.iter().map(|&v| f64::from(v)).collect()
            }
        };
        stream.synchronize().expect("GEMM ran");
        let scale = want.iter().fold(0f64, |a, v| a.max(v.abs()));
        let (rel, abs) = match shape.out {
            OutType::Bf16 => (1.0 / 256.0, 2e-3 * scale),
            // Far below bf16's rounding: the f32 output is not rounded through bf16.
            OutType::F32 => (1e-4, 2e-4 * scale),
        };
        for (i, (g, r)) in got.iter().zip(&want).enumerate() {
            assert!(
                (g - r).abs() <= rel * r.abs() + abs,
                "{label}: {m}x{n}x{k} ({:?} out) row {} col {}: got {g}, want {r}",
                shape.out,
                i / n,
                i % n
            );
        }
    }
}

#[test]
fn tuned_gemms_match_an_f64_reference() {
    use pagedserve_shard::backend::cuda::{Gemm, GemmShape, OutType, TuneShape};
    if !gpu() {
        return;
    }
    let ctx = cudarc::driver::CudaContext::new(0).expect("open cuda:0");
    // SAFETY: everything below runs on the one stream, as in the shard (`Gpu::open`).
    unsafe { ctx.disable_event_tracking() };
    let stream = ctx.new_stream().expect("stream");
    // A layer-like bf16 shape tuned up to 200 rows (buckets 48, 64, 96, 128, 160, 192, 200)
    // on two weight copies, and an lm_head-like f32 one with an n of no power of two.
    let bf16_shape = GemmShape {
        out: OutType::Bf16,
        n: 384,
        k: 512,
    };
    let f32_shape = GemmShape {
        out: OutType::F32,
        n: 1000,
        k: 256,
    };
    let w1_host = random_bf16(bf16_shape.n * bf16_shape.k, 1);
    let w2_host = random_bf16(bf16_shape.n * bf16_shape.k, 2);
    let wf_host = random_bf16(f32_shape.n * f32_shape.k, 3);
    let w1 = stream.clone_htod(&w1_host).expect("upload w1");
    let w2 = stream.clone_htod(&w2_host).expect("upload w2");
    let wf = stream.clone_htod(&wf_host).expect("upload wf");
    let shapes = [
        TuneShape {
            shape: bf16_shape,
            max_rows: 200,
            weights: vec![&w1, &w2],
        },
        TuneShape {
            shape: f32_shape,
            max_rows: 100,
            weights: vec![&wf],
        },
    ];
    // On, between and at the ends of buckets; below the first (heuristic) and past the last.
    let bf16_rows = [
        1, 17, 32, 33, 40, 48, 49, 50, 63, 64, 65, 100, 130, 199, 200, 256,
    ];
    let f32_rows = [1, 33, 47, 48, 64, 97, 99, 100, 150];
    let check = |gemm: &Gemm, label: &str| {
        check_gemm(gemm, &stream, bf16_shape, &w1_host, &w1, &bf16_rows, label);
        check_gemm(gemm, &stream, f32_shape, &wf_host, &wf, &f32_rows, label);
    };

    let dir = std::env::temp_dir().join(format!("pagedserve-gemm-tune-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let gemm = Gemm::new(&stream).expect("cuBLASLt");
    check(&gemm, "heuristic");
    let tuned = gemm.tune(&shapes, Some(&dir)).expect("tune");
    eprintln!("tuned: {tuned:?}");
    assert!(!tuned.from_cache);
    assert_eq!((tuned.shapes, tuned.buckets), (2, 7 + 4));
    assert_eq!(tuned.changed, gemm.tuned_buckets());
    check(&gemm, "tuned");

    // A second Gemm reads the picks back from the cache, re-checked.
    let again = Gemm::new(&stream).expect("cuBLASLt");
    let cached = again
        .tune(&shapes, Some(&dir))
        .expect("tune from the cache");
    eprintln!("cached: {cached:?}");
    assert!(cached.from_cache);
    assert_eq!(cached.buckets, tuned.buckets);
    assert_eq!(cached.changed + cached.rejected, tuned.changed);
    check(&again, "cached");
    let _ = std::fs::remove_dir_all(&dir);

    // Tuning keeps the first pick wherever nothing is clearly faster: run other candidates
    // at every row count too, so that an algorithm listed for a bucket's largest row count
    // is seen to be right (or refused by its check) at the bucket's other counts.
    let mut installed = 0;
    for index in 1..4 {
        let n = gemm.install_candidate(&shapes, index).expect("install");
        eprintln!("candidate {index}: {n} buckets");
        installed += n;
        check(&gemm, &format!("candidate {index}"));
    }
    assert!(installed > 0, "the heuristic lists more than one algorithm");
}

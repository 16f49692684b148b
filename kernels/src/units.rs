//! The translation units NVRTC compiles at shard start, in parallel, one PTX module each.
//!
//! As one translation unit the kernels took NVRTC 38 s on a 2-core dev machine and 54 s on an
//! H100 host (2026-11-26), 60% of it in the 48 decode-attention instances and 30% in the GEMV
//! kernels, one thread doing all of it on every first start (a new machine, a new version, a
//! container without its cache volume). Split so that no unit is much longer than the GEMVs,
//! the units compile on as many threads as there are units. The decode instances are split by `PS_DECODE_PART` (see the end
//! of decode_attention.cu); the whole source, without that define, still holds every kernel
//! (`full_source`, for `compile_ptx` and the tools).
//!
//! Only the decode units are split by KV-cache type: the bf16 ones (`decode0`-`decode3`) and
//! the fp8 ones (`decode_fp8_0`-`decode_fp8_3`, `PS_DECODE_FP8`). The other units hold the
//! kernels of both types (`rope_kv_write[_fp8]_kernel` in `small`, `paged_prefill[_fp8]_*` in
//! `prefill`, the 128- and 64-row (`_m64`) tiles alike) and are always loaded; [`units_for`] picks the decode units a shard needs, so a
//! bf16 server compiles 7 units, not 11.

use crate::kv::KvDtype;

/// One translation unit: common.cuh, then `files` (by name, in this order), compiled with
/// `defines` added to the options.
pub(crate) struct Unit {
    pub(crate) name: &'static str,
    pub(crate) files: &'static [&'static str],
    pub(crate) defines: &'static [&'static str],
    /// The KV-cache type whose decode attention (and nothing else) this unit compiles: loaded
    /// only for kernels asked for that type. `None`: kernels every server needs, always loaded.
    pub(crate) decode_kv: Option<KvDtype>,
}

pub(crate) const UNITS: [Unit; 11] = [
    Unit {
        name: "small",
        files: &["elementwise.cu", "rope.cu", "sample.cu", "bias.cu"],
        defines: &[],
        decode_kv: None,
    },
    Unit {
        name: "prefill",
        files: &["prefill_attention.cu"],
        defines: &[],
        decode_kv: None,
    },
    Unit {
        name: "gemv",
        files: &["gemv.cu"],
        defines: &[],
        decode_kv: None,
    },
    Unit {
        name: "decode0",
        files: &["decode_attention.cu"],
        defines: &["-DPS_DECODE_PART=0"],
        decode_kv: Some(KvDtype::Bf16),
    },
    Unit {
        name: "decode1",
        files: &["decode_attention.cu"],
        defines: &["-DPS_DECODE_PART=1"],
        decode_kv: Some(KvDtype::Bf16),
    },
    Unit {
        name: "decode2",
        files: &["decode_attention.cu"],
        defines: &["-DPS_DECODE_PART=2"],
        decode_kv: Some(KvDtype::Bf16),
    },
    Unit {
        name: "decode3",
        files: &["decode_attention.cu"],
        defines: &["-DPS_DECODE_PART=3"],
        decode_kv: Some(KvDtype::Bf16),
    },
    Unit {
        name: "decode_fp8_0",
        files: &["decode_attention.cu"],
        defines: &["-DPS_DECODE_PART=0", "-DPS_DECODE_FP8"],
        decode_kv: Some(KvDtype::Fp8E4m3),
    },
    Unit {
        name: "decode_fp8_1",
        files: &["decode_attention.cu"],
        defines: &["-DPS_DECODE_PART=1", "-DPS_DECODE_FP8"],
        decode_kv: Some(KvDtype::Fp8E4m3),
    },
    Unit {
        name: "decode_fp8_2",
        files: &["decode_attention.cu"],
        defines: &["-DPS_DECODE_PART=2", "-DPS_DECODE_FP8"],
        decode_kv: Some(KvDtype::Fp8E4m3),
    },
    Unit {
        name: "decode_fp8_3",
        files: &["decode_attention.cu"],
        defines: &["-DPS_DECODE_PART=3", "-DPS_DECODE_FP8"],
        decode_kv: Some(KvDtype::Fp8E4m3),
    },
];

/// Indices in [`UNITS`] of the units that are not split.
pub(crate) const SMALL_UNIT: usize = 0;
pub(crate) const PREFILL_UNIT: usize = 1;
pub(crate) const GEMV_UNIT: usize = 2;

/// Index in [`UNITS`] of the unit that instantiates decode attention over caches of `dtype`
/// for head dim `head_dim` (64 or 128) and GQA group `group` (1..=8):
/// `decode[_fp8_]{2 (D = 128) + 1 (G > 4)}`, as the `PS_DECODE_PART` blocks at the end of
/// decode_attention.cu split them (`PS_DECODE_FP8` picks the fp8 instances of a part).
pub(crate) fn decode_unit(dtype: KvDtype, head_dim: usize, group: usize) -> usize {
    let first = match dtype {
        KvDtype::Bf16 => 3,
        KvDtype::Fp8E4m3 => 7,
    };
    first + if head_dim == 128 { 2 } else { 0 } + usize::from(group > 4)
}

/// Indices in [`UNITS`], in that order, of the units loaded for KV caches of `kv_dtypes`: those
/// every server needs and the decode units of each listed type (none for an empty list;
/// repeats and order do not matter).
pub(crate) fn units_for(kv_dtypes: &[KvDtype]) -> Vec<usize> {
    (0..UNITS.len())
        .filter(|&u| UNITS[u].decode_kv.is_none_or(|d| kv_dtypes.contains(&d)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_indices_name_their_units() {
        assert_eq!(UNITS[SMALL_UNIT].name, "small");
        assert_eq!(UNITS[PREFILL_UNIT].name, "prefill");
        assert_eq!(UNITS[GEMV_UNIT].name, "gemv");
        let (b, f) = (KvDtype::Bf16, KvDtype::Fp8E4m3);
        assert_eq!(UNITS[decode_unit(b, 64, 1)].name, "decode0");
        assert_eq!(UNITS[decode_unit(b, 64, 4)].name, "decode0");
        assert_eq!(UNITS[decode_unit(b, 64, 5)].name, "decode1");
        assert_eq!(UNITS[decode_unit(b, 128, 4)].name, "decode2");
        assert_eq!(UNITS[decode_unit(b, 128, 8)].name, "decode3");
        assert_eq!(UNITS[decode_unit(f, 64, 1)].name, "decode_fp8_0");
        assert_eq!(UNITS[decode_unit(f, 128, 8)].name, "decode_fp8_3");
    }

    #[test]
    fn the_prefill_unit_compiles_every_prefill_kernel() {
        // No defines: the unit compiles every instance in prefill_attention.cu, the 64-row
        // (`_m64`) kernels with the 128-row ones, and kernel_names loads them all from it.
        let unit = &UNITS[PREFILL_UNIT];
        assert!(unit.defines.is_empty());
        assert_eq!(unit.files, ["prefill_attention.cu"]);
        let prefill: Vec<(String, usize)> = crate::loader::kernel_names()
            .into_iter()
            .filter(|(n, _)| n.starts_with("paged_prefill"))
            .collect();
        // Cache types x head dims x key tiles x tile rows.
        assert_eq!(prefill.len(), 2 * 2 * 2 * 2);
        assert!(prefill.iter().all(|&(_, u)| u == PREFILL_UNIT));
        for name in [
            "paged_prefill_d128",
            "paged_prefill_d128_m64",
            "paged_prefill_fp8_d64_k32_m64",
        ] {
            assert!(prefill.iter().any(|(n, _)| n == name), "{name}");
        }
    }

    #[test]
    fn decode_parts_in_the_source_match_decode_unit() {
        // Each `#if ... PS_DECODE_PART == k` block instantiates the (D, G) that decode_unit sends
        // to part k.
        let src = include_str!("../cuda/decode_attention.cu");
        let mut part = None;
        let mut seen = 0;
        for line in src.lines() {
            if let Some(k) = line.strip_prefix("#if !defined(PS_DECODE_PART) || PS_DECODE_PART == ")
            {
                part = k.trim().parse::<usize>().ok();
            } else if line.starts_with("#endif") {
                part = None;
            } else if let Some(args) = line.strip_prefix("DECODE_INST(") {
                let (d, g) = args.trim_end_matches(')').split_once(", ").expect("D, G");
                let k = part.expect("every DECODE_INST sits in a part block");
                let (d, g) = (d.parse().expect("D"), g.parse().expect("G"));
                assert_eq!(decode_unit(KvDtype::Bf16, d, g), 3 + k, "{line}");
                assert_eq!(decode_unit(KvDtype::Fp8E4m3, d, g), 7 + k, "{line}");
                seen += 1;
            }
        }
        assert_eq!(seen, 16);
    }

    fn names(units: &[usize]) -> Vec<&'static str> {
        units.iter().map(|&u| UNITS[u].name).collect()
    }

    #[test]
    fn a_kv_dtype_selects_its_own_decode_units_only() {
        let (b, f) = (KvDtype::Bf16, KvDtype::Fp8E4m3);
        let shared = ["small", "prefill", "gemv"];
        assert_eq!(
            names(&units_for(&[b])),
            [&shared[..], &["decode0", "decode1", "decode2", "decode3"]].concat()
        );
        assert_eq!(
            names(&units_for(&[f])),
            [
                &shared[..],
                &[
                    "decode_fp8_0",
                    "decode_fp8_1",
                    "decode_fp8_2",
                    "decode_fp8_3"
                ]
            ]
            .concat()
        );
        let all: Vec<usize> = (0..UNITS.len()).collect();
        assert_eq!(units_for(&[b, f]), all);
        assert_eq!(units_for(&[f, b, f]), all);
        assert_eq!(units_for(&crate::kv::KV_DTYPES), all);
        assert_eq!(names(&units_for(&[])), shared);
        for d in crate::kv::KV_DTYPES {
            for (hd, g) in [(64, 1), (64, 8), (128, 4), (128, 5)] {
                let u = decode_unit(d, hd, g);
                assert_eq!(UNITS[u].decode_kv, Some(d));
                assert!(units_for(&[d]).contains(&u));
                let other = if d == b { f } else { b };
                assert!(!units_for(&[other]).contains(&u));
            }
        }
    }

    #[test]
    fn decode_kv_matches_the_defines() {
        for unit in &UNITS {
            let part = unit
                .defines
                .iter()
                .any(|d| d.starts_with("-DPS_DECODE_PART="));
            let fp8 = unit.defines.contains(&"-DPS_DECODE_FP8");
            let want = match (part, fp8) {
                (false, false) => None,
                (true, false) => Some(KvDtype::Bf16),
                (true, true) => Some(KvDtype::Fp8E4m3),
                (false, true) => panic!("{}: PS_DECODE_FP8 without a part", unit.name),
            };
            assert_eq!(unit.decode_kv, want, "{}", unit.name);
            // Only decode_attention.cu is split by cache type.
            assert_eq!(
                unit.decode_kv.is_some(),
                unit.files == ["decode_attention.cu"],
                "{}",
                unit.name
            );
        }
    }
}

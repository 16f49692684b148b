//! The translation units NVRTC compiles at shard start, in parallel, one PTX module each.
//!
//! As one translation unit the kernels took NVRTC 38 s on a 2-core dev machine and 54 s on an
//! H100 host (2026-11-26), 60% of it in the 48 decode-attention instances and 30% in the GEMV
//! kernels, one thread doing all of it on every first start (a new machine, a new version, a
//! container without its cache volume). Split so that no unit is much longer than the GEMVs,
//! the units compile on as many threads as there are units. The decode instances are split by `PS_DECODE_PART` (see the end
//! of decode_attention.cu); the whole source, without that define, still holds every kernel
//! (`full_source`, for `compile_ptx` and the tools).

/// One translation unit: common.cuh, then `files` (by name, in this order), compiled with
/// `defines` added to the options.
pub(crate) struct Unit {
    pub(crate) name: &'static str,
    pub(crate) files: &'static [&'static str],
    pub(crate) defines: &'static [&'static str],
}

pub(crate) const UNITS: [Unit; 7] = [
    Unit {
        name: "small",
        files: &["elementwise.cu", "rope.cu", "sample.cu", "bias.cu"],
        defines: &[],
    },
    Unit {
        name: "prefill",
        files: &["prefill_attention.cu"],
        defines: &[],
    },
    Unit {
        name: "gemv",
        files: &["gemv.cu"],
        defines: &[],
    },
    Unit {
        name: "decode0",
        files: &["decode_attention.cu"],
        defines: &["-DPS_DECODE_PART=0"],
    },
    Unit {
        name: "decode1",
        files: &["decode_attention.cu"],
        defines: &["-DPS_DECODE_PART=1"],
    },
    Unit {
        name: "decode2",
        files: &["decode_attention.cu"],
        defines: &["-DPS_DECODE_PART=2"],
    },
    Unit {
        name: "decode3",
        files: &["decode_attention.cu"],
        defines: &["-DPS_DECODE_PART=3"],
    },
];

/// Index in [`UNITS`] of the unit that defines kernel `name`: decode kernels by head dim and
/// group (`paged_decode_d{D}_g{G}_p{P}`: part 2 (D = 128) + 1 (G > 4)), then by prefix.
pub(crate) fn unit_of(name: &str) -> usize {
    if let Some(rest) = name.strip_prefix("paged_decode_d") {
        let (d, rest) = rest.split_once("_g").unwrap_or((rest, ""));
        let g: usize = rest
            .split_once("_p")
            .and_then(|(g, _)| g.parse().ok())
            .unwrap_or(0);
        let part = if d == "128" { 2 } else { 0 } + usize::from(g > 4);
        return 3 + part;
    }
    if name.starts_with("paged_prefill_") {
        1
    } else if name.starts_with("gemv_") {
        2
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_map_to_the_unit_that_instantiates_them() {
        assert_eq!(UNITS[unit_of("paged_decode_d64_g1_p64")].name, "decode0");
        assert_eq!(UNITS[unit_of("paged_decode_d64_g4_p512")].name, "decode0");
        assert_eq!(UNITS[unit_of("paged_decode_d64_g5_p256")].name, "decode1");
        assert_eq!(UNITS[unit_of("paged_decode_d128_g4_p512")].name, "decode2");
        assert_eq!(UNITS[unit_of("paged_decode_d128_g8_p64")].name, "decode3");
        assert_eq!(UNITS[unit_of("paged_prefill_d128_k32")].name, "prefill");
        assert_eq!(UNITS[unit_of("gemv_rope_bf16_m7")].name, "gemv");
        assert_eq!(UNITS[unit_of("sample_kernel")].name, "small");
        assert_eq!(UNITS[unit_of("add_rms_norm_kernel")].name, "small");
    }

    #[test]
    fn decode_parts_in_the_source_match_unit_of() {
        // Each `#if ... PS_DECODE_PART == k` block instantiates the (D, G) that unit_of sends
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
                assert_eq!(
                    unit_of(&format!("paged_decode_d{d}_g{g}_p64")),
                    3 + k,
                    "{line}"
                );
                seen += 1;
            }
        }
        assert_eq!(seen, 16);
    }
}

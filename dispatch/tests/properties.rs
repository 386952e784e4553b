//! Random problems, compared on every ISA against the reference; a failure shrinks to
//! a minimal problem.

mod common;

use common::{ConvCase, GemmCase, Rng, requantize_for, schemes};
use proptest::prelude::*;
use qgemm::{Channelwise, Conv2dParams, OutputType, WeightLayout};

/// Bytes biased toward the values that break saturating kernels.
fn byte() -> impl Strategy<Value = u8> {
    prop_oneof![4 => any::<u8>(), 1 => Just(0u8), 1 => Just(255u8), 1 => Just(128u8), 1 => Just(127u8)]
}

fn bytes(len: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(byte(), len)
}

prop_compose! {
    fn gemm_case()(m in 0usize..20, n in 0usize..70, k in 0usize..48, a_extra in 0usize..3, out_extra in 0usize..3)
        (a in bytes(m * (k + a_extra)), b in bytes(k * n), a_zp in byte(), b_zp in byte(),
         per_column in any::<bool>(), b_zp_cols in bytes(n), nxk in any::<bool>(),
         output in 0usize..3, seed in any::<u64>(),
         m in Just(m), n in Just(n), k in Just(k), a_extra in Just(a_extra), out_extra in Just(out_extra))
        -> GemmCase
    {
        let mut rng = Rng::new(seed);
        let b_zp = if per_column {
            Channelwise::PerChannel(b_zp_cols.iter().map(|&x| x as i8).collect())
        } else {
            Channelwise::PerTensor(b_zp as i8)
        };
        let mut case = GemmCase {
            m, n, k,
            a,
            a_stride: k + a_extra,
            a_zp,
            b: b.iter().map(|&x| x as i8).collect(),
            layout: if nxk { WeightLayout::NxK } else { WeightLayout::KxN },
            b_zp,
            stage: Default::default(),
            out: OutputType::I32,
            out_stride: n + out_extra,
        };
        if rng.below(2) == 0 {
            case.stage.bias = Some((0..n).map(|_| rng.next_u64() as i32 >> rng.below(32)).collect());
        }
        if output > 0 {
            let out = if output == 1 { OutputType::U8 } else { OutputType::I8 };
            let per_channel = rng.below(2) == 0;
            let all = schemes(&mut rng, n, per_channel, k);
            let scheme = all[rng.below(all.len())].clone();
            case = case.with_output(out, Some(requantize_for(&mut rng, scheme, out)));
        }
        case
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn gemm_equals_reference(case in gemm_case()) {
        let expected = case.expected();
        for &isa in qgemm::available_isas() {
            for threads in [1, 2] {
                let (got, gaps_ok) = case.run(isa, threads);
                prop_assert_eq!(&got, &expected, "{} with {} threads", isa, threads);
                prop_assert!(gaps_ok, "{} wrote between rows", isa);
            }
        }
    }
}

prop_compose! {
    fn conv_case()(batch in 1usize..3, h in 1usize..9, w in 1usize..9, groups in 1usize..4, cg in 1usize..5,
                   ocg in 1usize..6, kh in 1usize..5, kw in 1usize..5, sh in 1usize..3, sw in 1usize..3,
                   dh in 1usize..3, dw in 1usize..3, pads in proptest::array::uniform4(0usize..3),
                   output in 0usize..3, seed in any::<u64>())
        -> Option<ConvCase>
    {
        let params = Conv2dParams::new([batch, h, w, groups * cg], groups * ocg, [kh, kw])
            .with_stride(sh, sw)
            .with_dilation(dh, dw)
            .with_padding(pads[0], pads[1], pads[2], pads[3])
            .with_groups(groups);
        // Shapes whose kernel does not fit are errors; the error suite covers them.
        params.out_height()?;
        params.out_width()?;
        let mut rng = Rng::new(seed);
        let mut case = ConvCase::random(&mut rng, params);
        if output > 0 {
            let oc = params.out_channels;
            case.out = if output == 1 { OutputType::U8 } else { OutputType::I8 };
            case.stage.bias = Some((0..oc).map(|_| rng.next_u64() as i32 >> 16).collect());
            let all = schemes(&mut rng, oc, true, kh * kw * cg);
            let scheme = all[rng.below(all.len())].clone();
            case.stage.requantize = Some(requantize_for(&mut rng, scheme, case.out));
        }
        Some(case)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn conv2d_equals_reference(case in conv_case()) {
        if let Some(case) = case {
            let expected = case.expected();
            for &isa in qgemm::available_isas() {
                let (got, gaps_ok) = case.run(isa, 1);
                prop_assert_eq!(&got, &expected, "{} on {:?}", isa, case.params);
                prop_assert!(gaps_ok);
            }
        }
    }
}

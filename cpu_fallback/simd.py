"""Explicit AVX-width vector code for numba, where LLVM's vectorisers pick the wrong loop.

:func:`segment_add8` is the inner loop of :mod:`cpu_fallback.banded`: it sums the 8 frame lanes
of every entry of one (band, bin) segment with ``<4 x double>`` fused multiply-adds, two entries
per step into four independent accumulators (the FMA latency is hidden), and adds the 8 sums to
8 consecutive output values.  Written as a numba intrinsic because numba's own code for the
same loop either stays scalar or vectorises along the entries with gathers (4x slower).
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.extending import intrinsic

__all__ = ["segment_add8"]


@intrinsic
def segment_add8(typingctx, out, out_index, buf, local, weights, e0, e1):
    """``out[i:i+8] += sum(weights[e] * buf[8*local[e] : 8*local[e]+8] for e in e0..e1-1)``.

    out, buf: C-contiguous float64 arrays; local: unsigned integer array (pixel index within
    the band); weights: float32 or float64 array; out_index (i), e0, e1: integers.  No bounds
    checks: the caller guarantees them.
    """
    sig = types.void(out, out_index, buf, local, weights, e0, e1)

    def codegen(context, builder, signature, args):
        out_v, index_v, buf_v, local_v, weights_v, e0_v, e1_v = args
        i64 = ir.IntType(64)
        i32 = ir.IntType(32)
        dbl = ir.DoubleType()
        v4 = ir.VectorType(dbl, 4)
        v4p = v4.as_pointer()

        def data(i, value):
            return context.make_array(signature.args[i])(context, builder, value).data

        def as_i64(value, signed):
            if value.type.width == 64:
                return value
            return builder.sext(value, i64) if signed else builder.zext(value, i64)

        outp, bufp, localp, weightsp = (
            data(0, out_v),
            data(2, buf_v),
            data(3, local_v),
            data(4, weights_v),
        )
        index = as_i64(index_v, signature.args[1].signed)
        e0 = as_i64(e0_v, signature.args[5].signed)
        e1 = as_i64(e1_v, signature.args[6].signed)
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(v4, [v4, v4, v4]), "llvm.fma.v4f64"
        )
        zero = ir.Constant(v4, [0.0] * 4)
        undef = ir.Constant(v4, ir.Undefined)
        splat = ir.Constant(ir.VectorType(i32, 4), [0] * 4)
        one = ir.Constant(i64, 1)
        two = ir.Constant(i64, 2)

        def load_entry(e):
            """(weight splat, lanes 0-3, lanes 4-7) of entry e."""
            pixel = builder.zext(builder.load(builder.gep(localp, [e])), i64)
            row = builder.bitcast(builder.gep(bufp, [builder.shl(pixel, ir.Constant(i64, 3))]), v4p)
            low = builder.load(row, align=8)
            high = builder.load(builder.gep(row, [one]), align=8)
            w = builder.load(builder.gep(weightsp, [e]))
            if w.type != dbl:
                w = builder.fpext(w, dbl)
            wv = builder.shuffle_vector(
                builder.insert_element(undef, w, ir.Constant(i32, 0)), undef, splat
            )
            return wv, low, high

        entry = builder.block
        loop = builder.append_basic_block("segment.pairs")
        rest = builder.append_basic_block("segment.rest")
        last = builder.append_basic_block("segment.last")
        done = builder.append_basic_block("segment.done")
        builder.cbranch(builder.icmp_signed("<", builder.add(e0, one), e1), loop, rest)

        # two entries per step, four accumulators
        builder.position_at_end(loop)
        e = builder.phi(i64)
        accs = [builder.phi(v4) for _ in range(4)]
        wa, a_low, a_high = load_entry(e)
        wb, b_low, b_high = load_entry(builder.add(e, one))
        new = [
            builder.call(fma, [wa, a_low, accs[0]]),
            builder.call(fma, [wa, a_high, accs[1]]),
            builder.call(fma, [wb, b_low, accs[2]]),
            builder.call(fma, [wb, b_high, accs[3]]),
        ]
        e_next = builder.add(e, two)
        builder.cbranch(builder.icmp_signed("<", builder.add(e_next, one), e1), loop, rest)
        e.add_incoming(e0, entry)
        e.add_incoming(e_next, loop)
        for acc, value in zip(accs, new, strict=True):
            acc.add_incoming(zero, entry)
            acc.add_incoming(value, loop)

        # the odd entry left, if any
        builder.position_at_end(rest)
        e_rest = builder.phi(i64)
        e_rest.add_incoming(e0, entry)
        e_rest.add_incoming(e_next, loop)
        sums = []
        for value in new:
            phi = builder.phi(v4)
            phi.add_incoming(zero, entry)
            phi.add_incoming(value, loop)
            sums.append(phi)
        low = builder.fadd(sums[0], sums[2])
        high = builder.fadd(sums[1], sums[3])
        builder.cbranch(builder.icmp_signed("<", e_rest, e1), last, done)

        builder.position_at_end(last)
        wl, l_low, l_high = load_entry(e_rest)
        low_last = builder.call(fma, [wl, l_low, low])
        high_last = builder.call(fma, [wl, l_high, high])
        builder.branch(done)

        builder.position_at_end(done)
        low_f = builder.phi(v4)
        low_f.add_incoming(low, rest)
        low_f.add_incoming(low_last, last)
        high_f = builder.phi(v4)
        high_f.add_incoming(high, rest)
        high_f.add_incoming(high_last, last)
        target = builder.bitcast(builder.gep(outp, [index]), v4p)
        target_high = builder.gep(target, [one])
        builder.store(builder.fadd(builder.load(target, align=8), low_f), target, align=8)
        builder.store(
            builder.fadd(builder.load(target_high, align=8), high_f), target_high, align=8
        )
        return context.get_dummy_value()

    return sig, codegen

"""Explicit AVX-width vector code for numba, where LLVM's vectorisers pick the wrong loop.

:func:`segment_add8` is the inner loop of :mod:`cpu_fallback.banded`: it sums the 8 frame lanes
of every entry of one (band, bin) segment with ``<4 x double>`` fused multiply-adds and adds the
8 sums to 8 consecutive output values.  :func:`segment_add8x2` and :func:`segment_add8x3` do
the same for 2 and 3 lane buffers at once (signal, variance, squares), reading each entry's
index and weight once.  With one buffer two entries are taken per step into four independent
accumulators, so the 4-cycle FMA latency is hidden; with 2 or 3 buffers the buffers themselves
give the independent chains.

Written as numba intrinsics because numba's own code for the same loop either stays scalar or
vectorises along the entries with gathers (2.5x and 4x slower, benchmarks/bench_cpu.py).
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.extending import intrinsic

__all__ = ["segment_add8", "segment_add8x2", "segment_add8x3"]


def _segment_codegen(n_buffers):
    """LLVM code for ``outs[k][i:i+8] += sum_e weights[e] * bufs[k][8*local[e]:][:8]``.

    Arguments (after ``n_buffers`` outputs): out_index, n_buffers lane buffers, local,
    weights, e0, e1.
    """
    unroll = 2 if n_buffers == 1 else 1

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        i32 = ir.IntType(32)
        dbl = ir.DoubleType()
        v4 = ir.VectorType(dbl, 4)
        v4p = v4.as_pointer()
        k = n_buffers

        def data(i):
            return context.make_array(signature.args[i])(context, builder, args[i]).data

        def as_i64(i):
            value = args[i]
            if value.type.width == 64:
                return value
            extend = builder.sext if signature.args[i].signed else builder.zext
            return extend(value, i64)

        outs = [data(i) for i in range(k)]
        index = as_i64(k)
        bufs = [data(k + 1 + i) for i in range(k)]
        localp = data(2 * k + 1)
        weightsp = data(2 * k + 2)
        e0 = as_i64(2 * k + 3)
        e1 = as_i64(2 * k + 4)
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(v4, [v4, v4, v4]), "llvm.fma.v4f64"
        )
        zero = ir.Constant(v4, [0.0] * 4)
        undef = ir.Constant(v4, ir.Undefined)
        splat = ir.Constant(ir.VectorType(i32, 4), [0] * 4)
        one = ir.Constant(i64, 1)
        step = ir.Constant(i64, unroll)

        def add_entry(e, accs):
            """accs (2 per buffer) + weight(e) * lanes of entry e; the new accumulators."""
            pixel = builder.zext(builder.load(builder.gep(localp, [e])), i64)
            offset = builder.shl(pixel, ir.Constant(i64, 3))
            w = builder.load(builder.gep(weightsp, [e]))
            if w.type != dbl:
                w = builder.fpext(w, dbl)
            wv = builder.shuffle_vector(
                builder.insert_element(undef, w, ir.Constant(i32, 0)), undef, splat
            )
            new = []
            for b, buf in enumerate(bufs):
                row = builder.bitcast(builder.gep(buf, [offset]), v4p)
                low = builder.load(row, align=8)
                high = builder.load(builder.gep(row, [one]), align=8)
                new.append(builder.call(fma, [wv, low, accs[2 * b]]))
                new.append(builder.call(fma, [wv, high, accs[2 * b + 1]]))
            return new

        n_acc = 2 * k * unroll
        entry = builder.block
        loop = builder.append_basic_block("segment.loop")
        rest = builder.append_basic_block("segment.rest")
        last = builder.append_basic_block("segment.last")
        done = builder.append_basic_block("segment.done")
        # main loop: `unroll` entries per step while e + unroll <= e1
        has_step = builder.icmp_signed("<=", builder.add(e0, step), e1)
        builder.cbranch(has_step, loop, rest)

        builder.position_at_end(loop)
        e = builder.phi(i64)
        accs = [builder.phi(v4) for _ in range(n_acc)]
        new = []
        for u in range(unroll):
            eu = builder.add(e, ir.Constant(i64, u)) if u else e
            new += add_entry(eu, accs[u * 2 * k : (u + 1) * 2 * k])
        e_next = builder.add(e, step)
        more = builder.icmp_signed("<=", builder.add(e_next, step), e1)
        builder.cbranch(more, loop, rest)
        e.add_incoming(e0, entry)
        e.add_incoming(e_next, loop)
        for acc, value in zip(accs, new, strict=True):
            acc.add_incoming(zero, entry)
            acc.add_incoming(value, loop)

        # fold the unrolled accumulators; one entry may be left (unroll 2)
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
        folded = sums[: 2 * k]
        for u in range(1, unroll):
            folded = [
                builder.fadd(a, b)
                for a, b in zip(folded, sums[u * 2 * k : (u + 1) * 2 * k], strict=True)
            ]
        builder.cbranch(builder.icmp_signed("<", e_rest, e1), last, done)

        builder.position_at_end(last)
        with_last = add_entry(e_rest, folded)
        builder.branch(done)

        builder.position_at_end(done)
        totals = []
        for before, after in zip(folded, with_last, strict=True):  # all phis first
            phi = builder.phi(v4)
            phi.add_incoming(before, rest)
            phi.add_incoming(after, last)
            totals.append(phi)
        for b, out in enumerate(outs):
            target = builder.bitcast(builder.gep(out, [index]), v4p)
            for half, where in enumerate((target, builder.gep(target, [one]))):
                total = builder.fadd(builder.load(where, align=8), totals[2 * b + half])
                builder.store(total, where, align=8)
        return context.get_dummy_value()

    return codegen


@intrinsic
def segment_add8(typingctx, out, out_index, buf, local, weights, e0, e1):
    """``out[i:i+8] += sum(weights[e] * buf[8*local[e] : 8*local[e]+8] for e in e0..e1-1)``.

    out, buf: C-contiguous float64 arrays; local: unsigned integer array (pixel index within
    the band); weights: float32 or float64 array; out_index (i), e0, e1: integers.  No bounds
    checks: the caller guarantees them.
    """
    return types.void(out, out_index, buf, local, weights, e0, e1), _segment_codegen(1)


@intrinsic
def segment_add8x2(typingctx, out_a, out_b, out_index, buf_a, buf_b, local, weights, e0, e1):
    """:func:`segment_add8` for two (output, buffer) pairs sharing the entries."""
    sig = types.void(out_a, out_b, out_index, buf_a, buf_b, local, weights, e0, e1)
    return sig, _segment_codegen(2)


@intrinsic
def segment_add8x3(
    typingctx, out_a, out_b, out_c, out_index, buf_a, buf_b, buf_c, local, weights, e0, e1
):
    """:func:`segment_add8` for three (output, buffer) pairs sharing the entries."""
    sig = types.void(out_a, out_b, out_c, out_index, buf_a, buf_b, buf_c, local, weights, e0, e1)
    return sig, _segment_codegen(3)

"""Explicit AVX-width vector code for numba, where LLVM's vectorisers pick the wrong loop.

:func:`segment_add8` is the inner loop of :mod:`cpu_fallback.banded`: it sums the 8 frame lanes
of every entry of one (band, bin) segment with ``<4 x double>`` fused multiply-adds and adds the
8 sums to 8 consecutive output values.  :func:`segment_add8_poisson` and
:func:`segment_add8_full` also sum the Poisson variance (weights w s^2 on the same lanes) and
the squares (w s^2 v^2), so the errors cost FMAs, not another pass over the frames.  Two
entries per step into separate accumulators hide the 4-cycle FMA latency.

Written as numba intrinsics because numba's own code for the same loop either stays scalar or
vectorises along the entries with gathers (2.5x and 4x slower, benchmarks/bench_cpu.py).
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.core.extending import intrinsic

__all__ = ["segment_add8", "segment_add8_poisson", "segment_add8_full"]


def _segment_codegen(n_out, unroll):
    """LLVM code summing the entries e0..e1-1 of one segment over 8 frame lanes.

    Arguments: ``n_out`` output arrays, out_index, buf, local, ws, then for n_out >= 2 wss and
    var_offset, then e0, e1.  Per entry (v = the 8 lanes of ``buf`` at 8 * local[e]):
    out0 += ws[e] * v; out1 += wss[e] * v; out2 += wss[e] * v * v; at the end var_offset is
    added to every lane of out1.  ``unroll`` entries per step, each into its own accumulators.
    """

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        i64 = ir.IntType(64)
        dbl = ir.DoubleType()
        v4 = ir.VectorType(dbl, 4)
        v4p = v4.as_pointer()

        def data(i):
            return context.make_array(signature.args[i])(context, builder, args[i]).data

        def as_i64(i):
            value = args[i]
            if value.type.width == 64:
                return value
            extend = builder.sext if signature.args[i].signed else builder.zext
            return extend(value, i64)

        outs = [data(i) for i in range(n_out)]
        at = n_out
        index = as_i64(at)
        bufp, localp, wsp = data(at + 1), data(at + 2), data(at + 3)
        at += 4
        if n_out > 1:
            wssp, var_offset = data(at), args[at + 1]
            at += 2
        e0, e1 = as_i64(at), as_i64(at + 1)
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(v4, [v4, v4, v4]), "llvm.fma.v4f64"
        )
        zero = ir.Constant(v4, [0.0] * 4)
        undef = ir.Constant(v4, ir.Undefined)
        one = i64(1)
        step = i64(unroll)

        def splat(value):
            if value.type != dbl:
                value = builder.fpext(value, dbl)
            vector = builder.insert_element(undef, value, i32(0))
            return builder.shuffle_vector(
                vector, undef, ir.Constant(ir.VectorType(i32, 4), [0] * 4)
            )

        def add_entry(e, accs):
            """accs (2 per output) plus entry e's terms: the new accumulators."""
            pixel = builder.zext(builder.load(builder.gep(localp, [e])), i64)
            row = builder.bitcast(builder.gep(bufp, [builder.shl(pixel, i64(3))]), v4p)
            lanes = [builder.load(row, align=8), builder.load(builder.gep(row, [one]), align=8)]
            w = splat(builder.load(builder.gep(wsp, [e])))
            new = [builder.call(fma, [w, lane, accs[h]]) for h, lane in enumerate(lanes)]
            if n_out > 1:
                w2 = splat(builder.load(builder.gep(wssp, [e])))
                new += [builder.call(fma, [w2, lane, accs[2 + h]]) for h, lane in enumerate(lanes)]
            if n_out > 2:
                new += [
                    builder.call(fma, [w2, builder.fmul(lane, lane), accs[4 + h]])
                    for h, lane in enumerate(lanes)
                ]
            return new

        width = 2 * n_out  # accumulators of one entry
        entry = builder.block
        loop = builder.append_basic_block("segment.loop")
        rest = builder.append_basic_block("segment.rest")
        last = builder.append_basic_block("segment.last")
        done = builder.append_basic_block("segment.done")
        builder.cbranch(builder.icmp_signed("<=", builder.add(e0, step), e1), loop, rest)

        # main loop: `unroll` entries per step while e + unroll <= e1
        builder.position_at_end(loop)
        e = builder.phi(i64)
        accs = [builder.phi(v4) for _ in range(width * unroll)]
        new = []
        for u in range(unroll):
            eu = builder.add(e, i64(u)) if u else e
            new += add_entry(eu, accs[u * width : (u + 1) * width])
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
        folded = sums[:width]
        for u in range(1, unroll):
            part = sums[u * width : (u + 1) * width]
            folded = [builder.fadd(a, b) for a, b in zip(folded, part, strict=True)]
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
        if n_out > 1:  # the variance's dark term, the same for every lane
            offset = splat(var_offset)
            totals[2] = builder.fadd(totals[2], offset)
            totals[3] = builder.fadd(totals[3], offset)
        for b, out in enumerate(outs):
            target = builder.bitcast(builder.gep(out, [index]), v4p)
            for half, where in enumerate((target, builder.gep(target, [one]))):
                total = builder.fadd(builder.load(where, align=8), totals[2 * b + half])
                builder.store(total, where, align=8)
        return context.get_dummy_value()

    return codegen


@intrinsic
def segment_add8(typingctx, out, out_index, buf, local, ws, e0, e1):
    """``out[i:i+8] += sum(ws[e] * buf[8*local[e] : 8*local[e]+8] for e in e0..e1-1)``.

    out, buf: C-contiguous float64 arrays; local: unsigned integer array (pixel index within
    the band); ws: float32 or float64 array; out_index (i), e0, e1: integers.  No bounds
    checks: the caller guarantees them.  Two entries per step.
    """
    return types.void(out, out_index, buf, local, ws, e0, e1), _segment_codegen(1, 2)


@intrinsic
def segment_add8_poisson(
    typingctx, out, variance, out_index, buf, local, ws, wss, var_offset, e0, e1
):
    """:func:`segment_add8`, and ``variance[i:i+8] += sum(wss[e] * lanes) + var_offset``
    (wss = w s^2: the Poisson variance from the same lanes).  Two entries per step."""
    sig = types.void(out, variance, out_index, buf, local, ws, wss, var_offset, e0, e1)
    return sig, _segment_codegen(2, 2)


@intrinsic
def segment_add8_full(
    typingctx, out, variance, squares, out_index, buf, local, ws, wss, var_offset, e0, e1
):
    """:func:`segment_add8_poisson`, and ``squares[i:i+8] += sum(wss[e] * lanes^2)``.  One
    entry per step (6 accumulators already hide the FMA latency in part; 12 would spill)."""
    sig = types.void(out, variance, squares, out_index, buf, local, ws, wss, var_offset, e0, e1)
    return sig, _segment_codegen(3, 1)

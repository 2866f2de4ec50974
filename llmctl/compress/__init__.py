"""llmctl's own compression cores: integer grids, GPTQ, AWQ, RTN and the decoder-block walker they share with prune.

- grid: group-wise integer grids (neural-compressor GPTQ's and RTN's symmetric grids, asymmetric with zero
  points) and `QuantizedWeight`, the integer codes + scales (+ zero points, + g_idx) of one weight matrix in
  the terms of compressed-tensors' pack-quantized layout;
- obs: the Optimal-Brain-Surgeon column sweep GPTQ and SparseGPT share (lazy batched updates);
- gptq: GPTQ (Frantar et al. 2022) on one matrix and on a whole model, true-sequential inside each block;
- awq: AWQ (Lin et al. 2023) scales and clipping searched on exact output errors from per-input Gram matrices;
- blocks: walking a model's decoder blocks over calibration windows (inputs captured once, per-input
  statistics such as Hessians gathered with one matmul per window, each block's outputs feeding the next);
- sequential: true-sequential passes through one block at about the cost of one forward of its linears;
- progress: the per-block ETA line every calibrated algorithm reports.

Examples:
    from llmctl.compress.gptq import quantize_model
    layers = quantize_model(model, windows, bits=4, group_size=128)   # name → QuantizedWeight
"""

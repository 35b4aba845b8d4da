"""Latent-SFT (Cheng et al., arXiv 2510.15522; official code DJC-GO-SOLO/Latent-SFT).

    layout.py   rows, chunking, the induction / supervision masks, dual-track positions
    losses.py   the latent mixture, stage 1's CE, stage 2's CE + KL, soft labels
    (lrjax/methods/latent_grpo/sft_phase.py runs the stages; docs/latent_sft.md)

Stage 1 trains an encoder (a copy of the CoT model with a learned compress
embedding) and the decoder: each encoder compress state h becomes the latent
softmax(top-K(h·Eᵀ))·E (E the decoder's input embeddings, no gradient) that the
decoder reads in place of a chunk of k CoT tokens. The trained pair writes
soft labels (top-K ids, probabilities) per latent; stage 2 trains the decoder
alone on them (CE on the answer + KL(labels ‖ model) before each latent).
"""

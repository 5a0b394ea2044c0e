"""SVD subspace layers: a frozen semantic part and K trainable artifact subspaces per target layer (MASM, Effort).

A target ``nn.Linear`` or ``nn.Conv2d`` (groups 1; its kernel read as an ``out x in*kh*kw`` matrix) with weight
``W = U diag(sigma) V^T`` (sigma descending, ``p = min(out, in)``) is wrapped by :class:`~.layer.SubspaceLayer`:

- the top ``p - K*r`` components form the frozen semantic part ``W_sem`` (never trained);
- the tail ``K*r`` components are split into K contiguous blocks of rank r in descending order: subspace 0 holds the
  largest tail singular values, subspace K-1 the smallest. Subspace k trains ``U_k``, ``s_k`` and ``V_k``;
- ``W_eff = W_sem + sum_k U_k diag(s_k) V_k^T`` equals ``W`` at injection.

``W_sem = W - W_tail0`` replaces the wrapped layer's frozen weight in place (``W_tail0``, the tail at injection, is
kept as thin factors), so a wrapped layer costs no more memory than the pretrained weight plus rank-``K*r`` factors.
The semantic bases that the orthogonality losses need are complements of the tail bases where a factor is square
(``P_sem = I - U_tail0 U_tail0^T``); only the long side of a non-square weight keeps its semantic basis.

A fused attention ``qkv`` Linear can be split into B = 3 row blocks (q, k, v), each decomposed on its own; every
factor and semantic buffer carries that leading block dimension (B = 1 otherwise).

The factors of same-shape layers live in one :class:`~.layer.FactorGroup` (three parameters with a leading layer
axis), so a step trains a few tensors, not three per subspace and layer. A training step hands every layer its
slice once (:func:`~.stack.shared_factors`), and the constraint losses (:mod:`.constraints`) run batched over the
groups' :class:`~.stack.FactorStack`. On a GPU this turns a few thousand small kernel launches per step into a few
dozen.

Modules: :mod:`.svd` (block SVDs and their cache), :mod:`.low_rank` (the low-rank Linear), :mod:`.layer` (the layer,
its groups, routing, merging, injection), :mod:`.stack` (a step's stacks), :mod:`.constraints` (the losses).
"""

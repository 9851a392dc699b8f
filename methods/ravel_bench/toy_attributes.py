"""Separable attributes for the toy target model: attribute subspaces and factorized entity embeddings.

In a real LLM, a method like MDAS can find a small subspace of the entity's hidden state that
carries one attribute and not the others. A toy trained on facts alone stores its entities as
arbitrary vectors instead, from which every attribute is read by the same later lookup: nothing
separates, and every method scores like a full swap (measured here; see ``experiments/README.md``).
With ``ToyModelConfig.attribute_dim = k > 0`` the toy is built so that the attributes are
separable, the way they are in an LLM, but not given away:

- attribute ``j`` owns ``k`` directions of the embedding space, rows ``j*k .. (j+1)*k`` of a
  random orthogonal matrix drawn from the config's seed (:func:`attribute_basis`); the methods
  are never told these directions, and they are not aligned with neurons;
- during training an entity's input embedding is *factorized* (:class:`FactorizedEntityEmbedding`):
  its free part projected outside all attribute subspaces, plus, for each attribute, a learned
  code shared by every entity with the same value, placed in that attribute's subspace;
- attribute swaps (``toy_model``) replace one attribute's subspace of the entity's input embedding
  by another entity's and train the base to answer with the source's value for that attribute and
  its own for the others, so later blocks read each attribute from its own subspace.

After training, :meth:`FactorizedEntityEmbedding.materialize` writes the factorized rows back into
the plain embedding table: the saved model is an ordinary ``LlamaForCausalLM``. Blocks then mix
the subspaces into the residual stream, and the methods have to find where each attribute went.
"""

import torch


def attribute_basis(d_model: int, n_attributes: int, attribute_dim: int, seed: int) -> torch.Tensor:
    """Each attribute's orthonormal directions in the embedding space.

    Args:
        d_model: hidden size.
        n_attributes: how many attributes get a subspace.
        attribute_dim: directions per attribute (``n_attributes * attribute_dim <= d_model``).
        seed: the toy config's seed; the basis is drawn from ``seed + 1`` (float64 QR).

    Returns:
        ``[n_attributes, attribute_dim, d_model]`` float32; all ``n_attributes * attribute_dim``
        rows together are orthonormal.
    """
    if n_attributes * attribute_dim > d_model:
        raise ValueError(
            f"{n_attributes} attributes x {attribute_dim} dims do not fit in d_model={d_model}"
        )
    generator = torch.Generator().manual_seed(seed + 1)
    q, _ = torch.linalg.qr(torch.randn(d_model, d_model, generator=generator, dtype=torch.float64))
    rows = q.T[: n_attributes * attribute_dim]  # orthonormal rows
    return rows.reshape(n_attributes, attribute_dim, d_model).float()


def swap_projections(basis: torch.Tensor) -> torch.Tensor:
    """Projections used by swap training: identity (full swap), then one per attribute.

    Args:
        basis: ``[n_attributes, attribute_dim, d_model]`` from :func:`attribute_basis`.

    Returns:
        ``[1 + n_attributes, d_model, d_model]``: entry 0 is the identity, entry ``1 + j`` is
        ``Q_j.T @ Q_j``, the orthogonal projection onto attribute ``j``'s subspace.
    """
    d_model = basis.shape[-1]
    per_attribute = basis.transpose(1, 2) @ basis  # [n_attributes, d_model, d_model]
    return torch.cat([torch.eye(d_model)[None], per_attribute])


class FactorizedEntityEmbedding(torch.nn.Module):
    """An input embedding whose entity rows are a free part plus one shared code per attribute value.

    For an entity token ``t`` with value ``v_j`` of attribute ``j``::

        embed(t) = E[t] @ (I - sum_j Q_j.T Q_j) + sum_j C_j[v_j] @ Q_j

    where ``E`` is the wrapped embedding table, ``Q_j`` (``[attribute_dim, d_model]``) attribute
    ``j``'s directions and ``C_j`` (``[n_values_j, attribute_dim]``) its learned value codes. Other
    tokens embed as ``E[t]``.

    Args:
        embedding: the model's input embedding, ``[vocab, d_model]``; trained through this module.
        entity_ids: ``[n_entities]`` token id of each entity.
        value_index: ``[n_attributes, n_entities]``: index of each entity's value of each
            attribute among that attribute's values.
        basis: ``[n_attributes, attribute_dim, d_model]`` from :func:`attribute_basis`.
        generator: draws the initial codes (normal, scaled so that a code's norm matches a row
            of ``embedding`` at the usual 0.02 initialization).
    """

    def __init__(
        self,
        embedding: torch.nn.Embedding,
        entity_ids: torch.Tensor,
        value_index: torch.Tensor,
        basis: torch.Tensor,
        generator: torch.Generator,
    ) -> None:
        super().__init__()
        n_attributes, attribute_dim, d_model = basis.shape
        vocab = embedding.weight.shape[0]
        if value_index.shape != (n_attributes, len(entity_ids)):
            raise ValueError(
                f"value_index must be [n_attributes={n_attributes}, n_entities={len(entity_ids)}]"
                f"; got {list(value_index.shape)}"
            )
        self.embedding = embedding
        flat = basis.reshape(-1, d_model)
        self.register_buffer("basis", basis.clone())
        self.register_buffer("complement", torch.eye(d_model) - flat.T @ flat)
        # per vocabulary id: -1 for non-entities, else the entity's row in value_index
        entity_row = torch.full((vocab,), -1, dtype=torch.long)
        entity_row[entity_ids] = torch.arange(len(entity_ids))
        self.register_buffer("entity_row", entity_row)
        self.register_buffer("value_index", value_index.clone())
        scale = 0.02 * (d_model / attribute_dim) ** 0.5
        self.codes = torch.nn.ParameterList(
            torch.nn.Parameter(
                scale
                * torch.randn(int(value_index[j].max()) + 1, attribute_dim, generator=generator)
            )
            for j in range(n_attributes)
        )

    @property
    def weight(self) -> torch.Tensor:
        """The wrapped table, ``[vocab, d_model]`` (what ``get_input_embeddings().weight`` reads)."""
        return self.embedding.weight

    def entity_vectors(self, ids: torch.Tensor) -> torch.Tensor:
        """Factorized embeddings of entity token ids ``[...]`` -> ``[..., d_model]``.

        Rows of ids that are not entities are meaningless (``forward`` masks them out).
        """
        rows = self.entity_row[ids]  # [...]
        out = self.embedding(ids) @ self.complement
        for j, codes in enumerate(self.codes):
            out = out + codes[self.value_index[j, rows]] @ self.basis[j]
        return out

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``[batch, seq]`` token ids -> ``[batch, seq, d_model]`` embeddings."""
        plain = self.embedding(input_ids)
        is_entity = self.entity_row[input_ids] >= 0  # [batch, seq]
        return torch.where(is_entity[..., None], self.entity_vectors(input_ids), plain)

    @torch.no_grad()
    def materialize(self) -> torch.nn.Embedding:
        """Write the factorized entity rows into the wrapped table and return it.

        Afterwards the plain table embeds every token exactly as this module did.
        """
        ids = torch.nonzero(self.entity_row >= 0).squeeze(1)
        self.embedding.weight[ids] = self.entity_vectors(ids)
        return self.embedding

"""The attention adapter: the same q/k/v from torch's MultiheadAttention and open_clip's
Attention, packed or separate, and one-line refusals of the attentions it cannot read."""

import pytest
import torch
from open_clip.transformer import Attention
from torch import nn

from clearclip_d2.modeling.clip.attention_adapter import merge_heads, project_qkv, takes_batch_first
from clearclip_d2.modeling.clip.decomposition import check_decomposable_block, qk_attention
from clearclip_d2.utils.errors import ClearCLIPError

WIDTH, HEADS = 16, 4


def random_attention(module: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(0, 0.5)
    return module.eval()


def with_separate_projections(attn: nn.Module) -> nn.Module:
    """The same attention with q, k and v as three weights and ``in_proj_weight`` None."""
    q, k, v = attn.in_proj_weight.detach().clone().chunk(3)
    attn.in_proj_weight = None
    attn.q_proj_weight, attn.k_proj_weight, attn.v_proj_weight = (nn.Parameter(w) for w in (q, k, v))
    return attn


def block_of(attn: nn.Module) -> nn.Module:
    block = nn.Module()
    block.attn = attn
    return block


@pytest.mark.parametrize("make", [lambda: nn.MultiheadAttention(WIDTH, HEADS, batch_first=True), lambda: Attention(WIDTH, HEADS)])
def test_separate_projections_give_the_packed_ones_q_k_v(make):
    packed = random_attention(make())
    separate = with_separate_projections(random_attention(make()))
    y = torch.randn(2, 5, WIDTH)
    for a, b in zip(project_qkv(packed, y), project_qkv(separate, y)):
        assert a.shape == (2, HEADS, 5, WIDTH // HEADS)
        assert torch.allclose(a, b, atol=1e-6)
    check_decomposable_block(block_of(separate))


@pytest.mark.parametrize("make", [lambda: nn.MultiheadAttention(WIDTH, HEADS, batch_first=True), lambda: Attention(WIDTH, HEADS)])
def test_adapter_computes_the_modules_own_self_attention(make):
    attn = random_attention(make())
    y = torch.randn(2, 5, WIDTH)
    ours = merge_heads(attn, qk_attention(*project_qkv(attn, y), None))
    theirs = attn(y, y, y, need_weights=False)[0] if isinstance(attn, nn.MultiheadAttention) else attn(y)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_open_clip_attention_with_separate_projections_matches_its_forward():
    """open_clip's next major version runs separate q/k/v itself; 3.x has no such weights."""
    attn = Attention(WIDTH, HEADS)
    if not hasattr(attn, "q_proj_weight"):
        pytest.skip("this open_clip's Attention has no separate q/k/v projections")
    attn = with_separate_projections(random_attention(attn))
    y = torch.randn(2, 5, WIDTH)
    assert torch.allclose(merge_heads(attn, qk_attention(*project_qkv(attn, y), None)), attn(y), atol=1e-5)


@pytest.mark.parametrize(
    "attn, reason",
    [
        (nn.MultiheadAttention(WIDTH, HEADS, add_bias_kv=True), "extra key/value biases"),
        (nn.MultiheadAttention(WIDTH, HEADS, add_zero_attn=True), "extra key/value biases"),
        (nn.MultiheadAttention(WIDTH, HEADS, kdim=8, vdim=8), "cross-attention"),
        (Attention(WIDTH, HEADS, scaled_cosine=True), "scaled-cosine"),
        (Attention(WIDTH, HEADS, qk_norm=True), "qk-norm"),
        (Attention(WIDTH, HEADS, scale_heads=True), "scale_heads"),
        (nn.Linear(WIDTH, WIDTH), "neither torch's MultiheadAttention nor open_clip's Attention"),
    ],
    ids=["bias_kv", "zero_attn", "kdim", "scaled_cosine", "qk_norm", "scale_heads", "not_attention"],
)
def test_unreadable_attention_is_refused_in_one_line(attn, reason):
    with pytest.raises(ClearCLIPError) as info:
        check_decomposable_block(block_of(attn))
    message = str(info.value)
    assert reason in message and "cannot be decomposed" in message and "MODEL_NAME" in message and "\n" not in message


def test_token_layout_comes_from_the_attention():
    assert takes_batch_first(nn.MultiheadAttention(WIDTH, HEADS, batch_first=True))
    assert not takes_batch_first(nn.MultiheadAttention(WIDTH, HEADS))
    assert takes_batch_first(Attention(WIDTH, HEADS))

# %% [markdown]
# # 04 · CLIP: how text becomes vectors an image model can use
#
# Stable Diffusion never reads your prompt. It reads 77 vectors that a **tokenizer** and a
# **text encoder** make from it, and the U-Net attends to those vectors at every denoising step.
# In SD v1 both come from OpenAI's CLIP (Radford et al. 2021), trained *contrastively* to put
# an image and its caption close together. This notebook builds all three pieces by hand,
# checks each against `transformers`, trains a small CLIP on ShapeWorld and measures what it
# learned, including whether it understands colour-shape pairs it has never seen.
#
# **After this notebook you will be able to:**
# - learn byte-pair-encoding merges by hand and explain word-end markers, start and end tokens,
#   the 77-token context, padding and truncation;
# - build CLIP's text transformer (embeddings, causal mask, pre-LayerNorm blocks, quick GELU,
#   final LayerNorm, pooled end token) and show it equals `transformers`' `CLIPTextModel`;
# - show by experiment that CLIP's text encoder is *causal*, not bidirectional like BERT;
# - write CLIP's symmetric contrastive loss, train with it, and handle repeated captions;
# - measure zero-shot classification and retrieval, on seen and on held-out compositions.

# %%
import math
import warnings
from collections import Counter

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from course_lib.core.utils import get_device, seed_everything
from course_lib.worlds import shapeworld as sw

seed_everything(0)
device = get_device("cpu")  # everything here is small; the CPU keeps every number reproducible
print("torch", torch.__version__, "| threads:", torch.get_num_threads())

# %% [markdown]
# ## 1. From text to tokens
#
# A network needs integers. Splitting into *words* gives an open vocabulary (every new word is
# unknown); splitting into *characters* gives very long sequences. **Byte-pair encoding** (BPE;
# Sennrich et al. 2016, after Gage 1994) sits between: start from characters and repeatedly glue
# together the most frequent adjacent pair. Frequent words end up as one token, rare words as a
# few pieces, and nothing is ever unknown.
#
# ### 1.1 BPE by hand
# Each word is split into characters, and its last character carries the end-of-word marker
# `</w>` (CLIP's convention), so that "red" at the end of a word and "red" inside "reddish" are
# different tokens. Then: count adjacent pairs (each word weighted by how often it occurs), merge
# the most frequent pair everywhere, repeat; stop when no pair occurs twice (a merge seen once would
# only memorise one word).

# %%
corpus = ["a red circle above a blue square", "a small red circle in the top left",
          "two red circles", "three blue squares", "a large blue square on the right",
          "a red square below a blue circle"]


def split_word(word):
    """'red' -> ('r', 'e', 'd</w>')"""
    return tuple(word[:-1]) + (word[-1] + "</w>",)


def count_pairs(words):
    """words: {symbols: frequency} -> Counter of adjacent symbol pairs."""
    pairs = Counter()
    for symbols, freq in words.items():
        for pair in zip(symbols, symbols[1:]):
            pairs[pair] += freq
    return pairs


def merge(symbols, pair):
    """Replace every occurrence of `pair` in `symbols` by one joined symbol, left to right."""
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == pair:
            out.append(symbols[i] + symbols[i + 1])
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return tuple(out)


def learn_bpe(texts, num_merges):
    words = Counter(w for text in texts for w in text.split())
    words = {split_word(w): f for w, f in words.items()}
    merges = []
    for step in range(num_merges):
        pairs = count_pairs(words)
        best = min(pairs, key=lambda p: (-pairs[p], p))  # the most frequent; ties: alphabetical
        if pairs[best] < 2:
            print(f"stopped after {step} merges: no pair occurs twice")
            break
        merges.append(best)
        if step < 8 or step % 5 == 4:
            print(f"merge {step + 1:2d}: {best[0]!r:>10} + {best[1]!r:<10} (seen {pairs[best]} times)")
        words = {merge(s, best): f for s, f in words.items()}
    return merges, words


hand_merges, hand_words = learn_bpe(corpus, num_merges=50)
print("\nthe corpus's words after the merges:")
print(sorted(hand_words, key=len))

# %% [markdown]
# To *apply* learned merges to new text, a word is split into characters and the merge with the
# lowest rank (learned earliest) among its adjacent pairs is applied, again and again, until no
# learned merge applies. A word never seen in training ("reddish") still gets tokens: pieces, and
# single characters at worst.

# %%
def apply_bpe(word, merges):
    rank = {pair: r for r, pair in enumerate(merges)}
    symbols = split_word(word)
    while len(symbols) > 1:
        pair = min(zip(symbols, symbols[1:]), key=lambda p: rank.get(p, math.inf))
        if pair not in rank:
            break
        symbols = merge(symbols, pair)
    return list(symbols)


for word in ["red", "circles", "square", "reddish", "blues"]:
    print(f"{word:8s} -> {apply_bpe(word, hand_merges)}")

# %% [markdown]
# `course_lib.models.tokenizer` holds the same algorithm, plus what a real tokenizer needs (next
# section). On the same text it learns the same merges, in the same order, and splits words the same way:

# %%
# NBVAL_CHECK_OUTPUT
from course_lib.models.tokenizer import CLIPStyleTokenizer, train_bpe

vocab, lib_merges = train_bpe(corpus, num_merges=50)
print(f"same {len(lib_merges)} merges as by hand:", lib_merges == hand_merges)
small_tok = CLIPStyleTokenizer(vocab, lib_merges)
print("same words:", all(small_tok.tokenize(w) == apply_bpe(w, hand_merges)
                         for w in ["red", "circles", "square", "reddish", "blues"]))

# %% [markdown]
# ### 1.2 What CLIP's tokenizer adds: bytes, a regex, special tokens, 77 positions
# * **Cleaning**: whitespace runs become one space, the text is lowercased.
# * **Pre-tokenization** with a regular expression: words of letters, single digits, and runs of
#   punctuation become separate pieces ("circle!!" is "circle" + "!!"); merges never cross them.
# * **Bytes, not characters**: each piece is turned into its UTF-8 bytes, each byte shown as a
#   printable character. The vocabulary starts with all 256 bytes (and the 256 with `</w>`), so
#   *any* text, in any script, can be tokenized; there is no "unknown" token.
# * **Special tokens**: `<|startoftext|>` before and `<|endoftext|>` after every prompt; the end
#   token has the highest id.
# * **A fixed context of 77 tokens**: longer prompts are cut (the end token is kept), shorter ones
#   are padded. SD v1 pads with `<|endoftext|>`, SD 2 with `!`.
#
# The course's tokenizer was trained by `scripts/train_clip.py` on 20,000 ShapeWorld training
# captions and shipped in `data/tokenizer/` as the three files `transformers` reads. Merging
# stopped when every word of the grammar had become one token.

# %%
from course_lib.train.clip import load_shipped_tokenizer

tok = load_shipped_tokenizer()
print(tok)
caption = "a small red circle in the top left"
print(tok.tokenize(caption))
print("ids:", tok.encode(caption))
batch_ids = tok([caption])
print("padded to the context:", tuple(batch_ids.shape), "| first 14 ids:", batch_ids[0, :14].tolist())
print("start id", tok.bos_token_id, "| end id (also padding)", tok.eos_token_id, "| vocabulary", len(tok))

# %% [markdown]
# **The same files in `transformers`.** `CLIPTokenizer.from_pretrained` reads our folder, and on
# every prompt below, including punctuation, odd spacing, capitals, the Russian prompt of the
# popular article that seeded this course ("a dog eating a sausage on the beach at sunset") and a
# prompt far longer than 77 tokens, the ids are identical.

# %%
# NBVAL_CHECK_OUTPUT
from transformers import CLIPTokenizer

from course_lib.core.paths import data_dir

hf_tok = CLIPTokenizer.from_pretrained(str(data_dir() / "tokenizer"))
prompts = [
    "a red circle above a blue square",
    "A RED Circle,above   a blue square!!",
    "  two\tgreen   triangles...  ",
    "Собака, которая ест сосиску на пляже в закатное время",
    "a red circle above a blue square, " * 10,
]
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    ours = tok(prompts)
hf = hf_tok(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt")["input_ids"]
for prompt, row_ours, row_hf in zip(prompts, ours, hf):
    n_real = len(tok.encode(prompt))
    print(f"{prompt[:40]!r:44s} {n_real:4d} tokens  identical to transformers: {torch.equal(row_ours, row_hf)}")
for w in caught:
    print(f"\n{w.category.__name__}: {w.message}")

# %% [markdown]
# Two things to notice. The ShapeWorld words are single tokens, while anything outside the
# grammar falls back to small pieces; every Cyrillic letter is two UTF-8 bytes, each its own token
# here, so the Russian prompt costs more than 77 tokens and is cut. A tokenizer is only as
# good as the text it was trained on; how well a real tokenizer and encoder handle a language
# depends on how much of it their training data held. And the cut is not silent: the course's
# tokenizer warns and names the dropped words (Stable Diffusion's pipelines log a similar warning).

# %%
from course_lib.models.tokenizer import bytes_to_unicode

byte_of = {ch: b for b, ch in bytes_to_unicode().items()}
print("'собака' in UTF-8:", "собака".encode().hex(" "))
print("its tokens:       ", tok.tokenize("собака"))
print("token -> byte:    ", [f"{t.replace('</w>', '')}={byte_of[t.replace('</w>', '')]:02x}" for t in tok.tokenize("собака")])

# %% [markdown]
# ## 2. The text encoder
#
# CLIP's text tower (the one SD v1 reads) is a stack of transformer blocks:
#
# 1. **embeddings**: a learned vector per token id plus a learned vector per position (0..76);
# 2. **blocks**, each *pre-LayerNorm*: `x = x + attention(LN1(x))`, then `x = x + MLP(LN2(x))`,
#    with multi-head self-attention under a **causal mask** and an MLP with **quick GELU**,
#    `x * sigmoid(1.702 x)`;
# 3. a **final LayerNorm**: its output is `last_hidden_state`, (B, 77, width), what SD v1's U-Net
#    cross-attends to;
# 4. a **pooled** vector: the state at the end token, (B, width), what CLIP's contrastive loss uses.
#
# Our shipped encoder is tiny (width 64, 3 blocks, 4 heads; SD v1's is width 768, 12 blocks,
# 12 heads) but the same architecture, parameter for parameter.

# %%
from course_lib.core.utils import count_parameters
from course_lib.train.clip import load_shipped_clip

_, clip_model = load_shipped_clip()
encoder = clip_model.text_encoder
print(encoder.config)
print(f"{count_parameters(encoder):,} parameters")
print([name for name, _ in encoder.named_parameters()][:12], "...")

# %% [markdown]
# ### 2.1 A text encoder in plain sight
# Here is the whole forward pass written out, reading its weights from `course_lib`'s encoder.
# `causal=True` masks attention so that position *i* sees only positions 0..*i*.

# %%
# NBVAL_CHECK_OUTPUT
def my_layer_norm(x, ln):
    mean = x.mean(-1, keepdim=True)
    var = x.var(-1, keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def my_attention(x, attn, heads, causal):
    b, n, d = x.shape
    def split(t):  # (B, L, D) -> (B, heads, L, D/heads)
        return t.view(b, n, heads, d // heads).transpose(1, 2)
    q, k, v = split(attn.q_proj(x)), split(attn.k_proj(x)), split(attn.v_proj(x))
    scores = q @ k.transpose(-1, -2) / math.sqrt(d // heads)  # (B, heads, L, L)
    if causal:
        allowed = torch.ones(n, n, dtype=torch.bool).tril()  # query i may see keys j <= i
        scores = scores.masked_fill(~allowed, float("-inf"))
    out = scores.softmax(dim=-1) @ v  # (B, heads, L, D/heads)
    return attn.out_proj(out.transpose(1, 2).reshape(b, n, d))  # back to (B, L, D)


def my_block(x, layer, heads, causal=True):
    x = x + my_attention(my_layer_norm(x, layer.layer_norm1), layer.self_attn, heads, causal)
    h = layer.mlp.fc1(my_layer_norm(x, layer.layer_norm2))
    return x + layer.mlp.fc2(h * torch.sigmoid(1.702 * h))  # quick GELU


def my_text_encoder(ids, enc, causal=True):
    emb = enc.embeddings
    x = emb.token_embedding.weight[ids] + emb.position_embedding.weight[: ids.shape[1]]  # (B, L, D)
    for layer in enc.encoder.layers:
        x = my_block(x, layer, enc.config.num_attention_heads, causal)
    last = my_layer_norm(x, enc.final_layer_norm)
    end = (ids == enc.config.eos_token_id).int().argmax(dim=1)  # the first end token of each row
    return last, last[torch.arange(len(ids)), end]


ids = tok(["a red circle above a blue square", "three white crosses", "a small cyan cross on the left"])
with torch.no_grad():
    mine_last, mine_pooled = my_text_encoder(ids, encoder)
    lib = encoder(ids)
print("last_hidden_state", tuple(lib.last_hidden_state.shape), "pooled", tuple(lib.pooled.shape))
print("hand-built == course_lib (max |difference| < 1e-5):",
      bool((mine_last - lib.last_hidden_state).abs().max() < 1e-5), "(states),",
      bool((mine_pooled - lib.pooled).abs().max() < 1e-5), "(pooled)")

# %% [markdown]
# ### 2.2 The same weights in `transformers`
# `course_lib.models.clip.CLIPTextEncoder` uses the parameter names of `transformers`' `CLIPTextModel`, so
# a state dict moves between them unchanged (notebook 11 loads the public SD weights this way).
# A tiny *random* `CLIPTextModel`, its weights loaded into ours, gives the same outputs:

# %%
# NBVAL_CHECK_OUTPUT
from transformers import CLIPTextConfig as HFTextConfig
from transformers import CLIPTextModel

from course_lib.models.clip import CLIPTextEncoder
from course_lib.pipeline.convert.clip import clip_text_config_from_hf, load_hf_clip_text_state_dict

torch.manual_seed(0)
hf_config = HFTextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
hf_model = CLIPTextModel(hf_config).eval()
ours_model = load_hf_clip_text_state_dict(CLIPTextEncoder(clip_text_config_from_hf(hf_config)),
                                          hf_model.state_dict()).eval()
with torch.no_grad():
    ref = hf_model(ids)
    out = ours_model(ids)
print("transformers == course_lib (max |difference| < 1e-5):",
      bool((ref.last_hidden_state - out.last_hidden_state).abs().max() < 1e-5), "(last_hidden_state),",
      bool((ref.pooler_output - out.pooled).abs().max() < 1e-5), "(pooled)")

# %% [markdown]
# ### 2.3 Causal, not bidirectional
# The popular article says CLIP is "bidirectional training of transformers, like BERT". It is
# not: BERT (Devlin et al. 2019) lets every token attend to every other and is trained by filling
# in masked words; CLIP's text encoder (Radford et al. 2021) is a *causal* transformer, each token
# attending only to itself and the tokens before it, trained contrastively against images.
#
# An experiment shows which one we have. Change one word in the middle of a prompt and look at
# how much each position's output moves. With the causal mask, every position *before* the
# change is bit-for-bit unchanged. Remove the mask (the same weights, bidirectional as BERT would
# be) and every position moves.

# %%
a = tok(["a red circle above a blue square"])
b = tok(["a red circle below a blue square"])  # position 4 changes ("above" -> "below")
with torch.no_grad():
    change_causal = (my_text_encoder(a, encoder)[0] - my_text_encoder(b, encoder)[0]).norm(dim=-1)[0, :12]
    change_bidir = (my_text_encoder(a, encoder, causal=False)[0]
                    - my_text_encoder(b, encoder, causal=False)[0]).norm(dim=-1)[0, :12]
    lib_a, lib_b = encoder(a).last_hidden_state, encoder(b).last_hidden_state
labels = ["<start>", *tok.tokenize("a red circle above a blue square"), "<end>", "pad", "pad", "pad"]
labels = [t.replace("</w>", "") for t in labels]
fig, axes = plt.subplots(1, 2, figsize=(12, 3.2))
x = np.arange(12)
for ax, change, title in ((axes[0], change_causal, "causal mask (CLIP)"),
                          (axes[1], change_bidir, "no mask: bidirectional, like BERT")):
    ax.bar(x, change, color="C0" if "causal" in title else "C1")
    ax.axvline(3.5, color="gray", ls=":")
    ax.set_xticks(x, labels, rotation=35)
    ax.set_title(title)
for i in range(4):
    axes[0].text(i, 0.05, "0", ha="center", fontsize=9)
axes[0].set_ylabel("|change of the output vector|")
fig.suptitle("changing 'above' to 'below' (position 4): which positions' outputs move?")
plt.tight_layout()
plt.show()
print("course_lib encoder, positions 0-3 unchanged bit for bit:", torch.equal(lib_a[0, :4], lib_b[0, :4]))

# %% [markdown]
# So a causal encoder's early positions know nothing of what follows: the state at "red" cannot
# know that a circle comes next. That is why CLIP reads its summary of the prompt at the **end
# token**: it is the first position that has seen the whole prompt. Everything after it (the
# padding) sees the whole prompt too, but also cannot change anything before it. Two consequences
# this course uses:
#
# * Padding to 77 or only to the longest prompt of a batch gives the same pooled vector (to float
#   rounding), so `scripts/train_clip.py` trains on short padded batches (for the two prompts below
#   the text tower reads 9 positions instead of 77) while the model keeps its 77 positions for the
#   U-Net.
# * Changing the *first* word changes the pooled vector: it sees the whole prompt.

# %%
prompts = ["a red circle above a blue square", "three white crosses"]
with torch.no_grad():
    pooled_77 = encoder(tok(prompts)).pooled
    pooled_short = encoder(tok(prompts, padding="longest")).pooled
    first_word = encoder(tok(["two red circle above a blue square"])).pooled
print("ids shapes:", tuple(tok(prompts).shape), "vs", tuple(tok(prompts, padding="longest").shape))
print("pooled, padded to 77 vs to the longest: max |difference|", f"{(pooled_77 - pooled_short).abs().max():.1e}")
print("pooled moves when the first word changes:", f"{(first_word[0] - pooled_77[0]).norm():.2f}")

# %% [markdown]
# ## 3. Training contrastively
#
# ### 3.1 The loss
# A batch holds N images and their N captions. Each image is encoded and projected to a unit
# vector, each caption too; their cosine similarities, times a learned temperature (initialised
# at 1/0.07), form an N x N matrix of logits whose diagonal holds the true pairs. The loss asks
# each **row** to pick its diagonal entry (image -> text, a cross-entropy over N captions) and
# each **column** likewise (text -> image), and averages the two. This *symmetric InfoNCE* loss
# is CLIP's whole training objective. At chance (all logits equal) it is log N.
#
# **Repeated captions.** ShapeWorld's grammar is small, so a batch of 256 often holds the same
# caption twice ("two red squares"), and two *different* captions can say the same thing ("a red
# circle above a blue square", "a blue square below a red circle"). Are the other copies *false
# negatives*, pushed away although they match? A target matrix (`matching_targets`) can mark every
# match, and the loss then spreads each row's (and column's) target over its matches. Compare it
# with CLIP's plain loss, the identity targets:

# %%
# NBVAL_CHECK_OUTPUT
from course_lib.models.clip import clip_loss, matching_targets
from course_lib.train.clip import caption_key

captions = ["two red squares", "a red circle above a blue square", "two red squares",
            "a blue square below a red circle"]
keys = [caption_key(c) for c in captions]  # equivalent captions get one key
print("same caption:\n", matching_targets(captions).int(), "\nsame meaning:\n", matching_targets(keys).int())

g = torch.Generator().manual_seed(0)
embedding_of = {c: F.normalize(torch.randn(8, generator=g), dim=0) for c in sorted(set(captions))}
text_embeds = torch.stack([embedding_of[c] for c in captions])  # identical captions: identical vectors
image_embeds = F.normalize(torch.randn(4, 8, generator=g), dim=1)
logits = 10 * image_embeds @ text_embeds.T


def my_clip_loss(logits, targets):
    t = targets.float()
    image_to_text = -(t / t.sum(1, keepdim=True) * logits.log_softmax(dim=1)).sum(1).mean()
    text_to_image = -(t.T / t.T.sum(1, keepdim=True) * logits.T.log_softmax(dim=1)).sum(1).mean()
    return (image_to_text + text_to_image) / 2


print(f"\nplain CLIP loss (identity targets): {clip_loss(logits):.4f}  (by hand: "
      f"{my_clip_loss(logits, torch.eye(4)):.4f}; chance log 4 = {math.log(4):.4f})")
print(f"identical captions as matches:      {clip_loss(logits, matching_targets(captions)):.4f}")
print(f"same meaning as matches:            {clip_loss(logits, matching_targets(keys)):.4f}")

# %% [markdown]
# A surprise worth a moment: for *identical* captions the target matrix changes nothing, not the
# loss and not any gradient. The two copies have the same embedding, so every image scores them
# equally; the plain loss can never give "its" copy more than half the probability, so it does not
# push the copies apart, it only raises the loss's floor (to log 2 for a pair of copies). The
# false negatives that matter are captions worded *differently* with the same meaning; matching
# them by `caption_key` is what `train_contrastive` does.
#
# **Hard negatives.** Among random captions, the one that matches an image usually differs from
# the rest in many words, so a model can pass by noticing *which* words occur and ignoring how
# they are bound together. CLIP-like models are known to behave like such "bags of words"
# (Yuksekgonul et al. 2023). Our training therefore also adds, for every two-object image, its
# caption with the colours swapped and with the relation reversed as extra *wrong* captions
# (extra columns of the logits, used only in the image -> text direction):

# %%
from course_lib.train.clip import hard_negative_captions

print(hard_negative_captions(["a red circle above a blue square"]))
texts = captions + hard_negative_captions(captions)
print(matching_targets(keys, [caption_key(t) for t in texts]).int())

# %% [markdown]
# ### 3.2 A short training run
# A tiny model, 150 steps (the time is printed), on fresh ShapeWorld batches (every step draws new
# images, so nothing is ever seen twice). The loss starts near log(batch size), chance, and falls.

# %%
from course_lib.train.clip import (
    ClipTrainingConfig,
    build_clip_model,
    clip_model_config,
    evaluate_clip,
    init_clip_weights,
    train_contrastive,
)

seed_everything(0)
small = init_clip_weights(build_clip_model(**clip_model_config(tok, width=32, layers=2, image_widths=(8, 16, 32),
                                                                embed_dim=32)))
short = ClipTrainingConfig(steps=150, batch_size=64, lr=3e-3, warmup=15, seed=1)
short_history = train_contrastive(small, tok, short)
print(f"{count_parameters(small):,} parameters; {short.steps} steps in {short_history.seconds:.0f} s; loss "
      f"{np.mean(short_history.loss[:5]):.2f} -> {np.mean(short_history.loss[-10:]):.2f} "
      f"(chance: log 64 = {math.log(64):.2f})")

# %%
from course_lib.core.plotting import plot_curves

ax = plot_curves({"short run (batch 64)": short_history.loss}, smooth=5, title="contrastive loss, a short run")
ax.axhline(math.log(64), color="gray", ls=":", label="chance, log 64")
ax.legend()
plt.show()
quick = evaluate_clip(small, tok, "train", n=300)
print("after the short run, zero-shot colour accuracy on fresh images:", round(quick["colour"], 2),
      "| shape:", round(quick["shape"], 2))

# %% [markdown]
# ### 3.3 The shipped model
# Longer training makes a better model; `scripts/train_clip.py` does it with the same code
# (`train_contrastive`) and ships the weights. Its checkpoint records how it was made, in how
# long, and the loss at every step.

# %%
from course_lib.core.checkpoints import read_manifest
from course_lib.train.clip import shipped_metrics

stored = shipped_metrics()
entry = read_manifest()["clip_shapeworld"]
print("made by:", entry["command"])
print(f"training: {stored['train_config']['steps']} steps of {stored['train_config']['batch_size']} pairs, "
      f"{stored['train_minutes']} min on this course's 2-core CPU machine ({stored['torch_threads']} torch thread), "
      f"{stored['total_minutes']} min in all")
print(f"{count_parameters(clip_model):,} parameters: text encoder {count_parameters(clip_model.text_encoder):,}, "
      f"image encoder {count_parameters(clip_model.image_encoder):,}")
fig, axes = plt.subplots(1, 2, figsize=(11, 3.3))
plot_curves({"loss": stored["loss"]}, smooth=10, ax=axes[0], title="shipped model: contrastive loss")
axes[0].axhline(math.log(stored["train_config"]["batch_size"]), color="gray", ls=":")
plot_curves({"temperature": stored["logit_scale"]}, ax=axes[1], ylabel="exp(logit_scale)",
            title="the learned temperature")
plt.tight_layout()
plt.show()

# %% [markdown]
# ### 3.4 What the model sees: an image-caption similarity matrix
# Eight fresh images and their captions. A good model puts its largest value on the diagonal in
# every row and column.

# %%
from course_lib.train.clip import encode_images, encode_texts

world = sw.ShapeWorld()
show = world.sample(64, seed=7, split="train")
first_of = {}
for i, caption in enumerate(show.captions):
    first_of.setdefault(caption, i)
chosen = list(first_of.values())[:8]  # the first eight images with different captions
images = show.tensors()[chosen]
caps = [show.captions[i] for i in chosen]
sim = (encode_images(clip_model, images) @ encode_texts(clip_model, tok, caps).T).numpy()

fig = plt.figure(figsize=(10, 7.5))
grid = fig.add_gridspec(2, 8, height_ratios=[1, 6.5], hspace=0.05)
for j in range(8):
    ax = fig.add_subplot(grid[0, j])
    ax.imshow((images[j].permute(1, 2, 0).numpy() + 1) / 2, interpolation="nearest")
    ax.set_axis_off()
ax = fig.add_subplot(grid[1, :])
im = ax.imshow(sim.T, cmap="viridis")
for i in range(8):
    for j in range(8):
        ax.text(j, i, f"{sim[j, i]:.2f}", ha="center", va="center", fontsize=8,
                color="black" if sim[j, i] > sim.max() - 0.3 * (sim.max() - sim.min()) else "white")
ax.set_yticks(range(8), caps, fontsize=9)
ax.set_xticks(range(8), [f"image {j + 1}" for j in range(8)], fontsize=8)
fig.suptitle("cosine similarity: captions (rows) against the images above them (columns)", fontsize=11, y=0.93)
fig.colorbar(im, ax=ax, fraction=0.03)
plt.show()

# %% [markdown]
# ### 3.5 Zero-shot classification and retrieval: seen and held-out
# **Zero-shot** means no classifier is trained: a class is a caption, and an image gets the class
# whose caption it matches best. Four colour-shape pairs (green circle, blue triangle, yellow
# square, purple cross) never appeared in training; images of them test *composition*.
#
# How to score "which colour?" when a caption also names a shape, a size and a place? CLIP's
# recipe averages the embeddings of many prompts per class ("prompt ensembling";
# `course_lib.models.clip.zero_shot_classify` does it). In CLIP's setting the other words ("a photo of
# a ...", "a drawing of a ...") are irrelevant to the class. Here they are not: a caption with the
# wrong colour matches badly whatever its shape, so the average over all colours blurs the shape
# signal. Let us measure both on the same images.

# %%
from course_lib.models.clip import zero_shot_classify

singles = world.sample(500, seed=11, split="train", kinds=("single",))
shape_prompts = [[sw.single_caption(c, s, z, loc) for c in sw.COLORS for z in sw.SIZES for loc in sw.LOCATIONS]
                 for s in sw.SHAPES]
pred = zero_shot_classify(clip_model, tok, singles.tensors(), shape_prompts)
ensemble_acc = (pred.numpy() == singles.shapes[:, 0]).mean()
marginal_acc = evaluate_clip(clip_model, tok, "train", n=500, seed=11)["shape"]
print(f"shape, prompt ensembling (averaged embeddings): {ensemble_acc:.3f}")
print(f"shape, probability summed over full captions:    {marginal_acc:.3f}")

# %% [markdown]
# Summing probabilities (a softmax over *all* 576 single-object captions, then adding up those that
# name each shape) marginalises the other attributes properly; `evaluate_clip` scores colour, shape,
# size, location and count this way. It also measures two harder things: **relation** (the
# true caption against the same two objects in each of the 4 relations; chance 0.25) and
# **binding** (the true caption against the one with the two colours swapped; chance 0.5), and
# **retrieval** recall@k among 500 images of every kind and their captions. The numbers below are
# computed now, on fresh images never used in training:

# %%
# NBVAL_CHECK_OUTPUT
from course_lib.train.clip import format_report

torch.manual_seed(0)
reports = {"seen": evaluate_clip(clip_model, tok, "train"), "held-out": evaluate_clip(clip_model, tok, "heldout")}
print(format_report(reports, digits=3))

# %% [markdown]
# How to read this:
#
# * **Single attributes compose.** Colour, size and location are read as well on held-out images
#   as on seen ones, and count nearly as well: the image encoder learned "green" from green
#   squares and "circle" from red circles. Shape is the exception that shows the limit: on
#   held-out images it drops by about a tenth, and the errors are concentrated: green circles
#   (never seen) read as squares, a few blue triangles as crosses (below). Learned combinations
#   act as a prior that can beat the evidence.
# * **Binding and relations** are well above chance (0.5 and 0.25) on both splits, only a little
#   lower on held-out images. Two training choices aim at them: hard negatives (swapped colours,
#   reversed relations) and matching captions by *meaning*. (This notebook does not train a model
#   without them, so it does not measure how much each one adds.) Binding and relations are also
#   where real text-to-image models are weakest: position and colour attribution are Stable
#   Diffusion's lowest GenEval categories (Ghosh et al. 2023).
# * Retrieval among 500 captions: the right caption is nearly always in the top 5, and first in
#   more than nine cases of ten even for held-out combinations.
#
# Let us look at held-out images and the single-object captions the model ranks first: three whose
# shape it reads right, and three it gets wrong.

# %%
held = world.sample(200, seed=3, split="heldout", kinds=("single",))
all_single = [sw.single_caption(c, s, z, loc) for c in sw.COLORS for s in sw.SHAPES for z in sw.SIZES
              for loc in sw.LOCATIONS]
probs = (clip_model.scale() * encode_images(clip_model, held.tensors())
         @ encode_texts(clip_model, tok, all_single).T).softmax(dim=1)  # (200, 576)
shape_pred = probs.view(200, 8, 4, 2, 9).sum(dim=(1, 3, 4)).argmax(dim=1).numpy()
right = np.flatnonzero(shape_pred == held.shapes[:, 0])[:3]
wrong = np.flatnonzero(shape_pred != held.shapes[:, 0])[:3]
fig, axes = plt.subplots(2, 3, figsize=(10.5, 8.4))
for ax, i in zip(axes.flat, [*right, *wrong]):
    ax.imshow(held.images[i], interpolation="nearest")
    ax.set_axis_off()
    top = probs[i].topk(3)
    lines = [f"{p:.2f}  {all_single[k].removeprefix('a ')}" for p, k in zip(top.values.tolist(), top.indices.tolist())]
    ax.set_title("truth: " + held.captions[i].removeprefix("a ") + "\n" + "\n".join(lines), fontsize=8, loc="left")
axes[0, 0].text(-0.15, 0.5, "shape right", transform=axes[0, 0].transAxes, rotation=90, va="center", fontsize=11)
axes[1, 0].text(-0.15, 0.5, "shape wrong", transform=axes[1, 0].transAxes, rotation=90, va="center", fontsize=11)
plt.subplots_adjust(hspace=0.42, wspace=0.2, top=0.9)
plt.show()
print(f"shape errors among these 200 held-out images: {(shape_pred != held.shapes[:, 0]).sum()}; the mistaken shapes:",
      Counter(f"{sw.COLOR_NAMES[c]} {sw.SHAPES[t]} -> {sw.SHAPES[p]}"
              for c, t, p in zip(held.colors[:, 0], held.shapes[:, 0], shape_pred) if t != p).most_common())

# %% [markdown]
# ## 4. What later notebooks use
# The U-Net of notebooks 09 and 10 cross-attends to `text_encoder(ids).last_hidden_state`:
# 77 vectors of width 64 per prompt, exactly as SD v1 uses 77 vectors of width 768.
# `load_shipped_clip()` gives the tokenizer and the whole model; `.text_encoder` is the part
# the U-Net needs, and `text_context(ids, layer=-2)` gives SD 2's penultimate-layer variant.

# %%
with torch.no_grad():
    context = encoder(tok(["a red circle above a blue square", ""])).last_hidden_state
print("context for the U-Net:", tuple(context.shape), "| the empty prompt (used by classifier-free guidance) "
      "is a context too:", tuple(context[1].shape))

# %% [markdown]
# ## Summary
# * A **tokenizer** learns byte-pair merges from text: frequent words become one token, anything
#   else falls back to pieces and, at worst, bytes, so no text is unknown. Prompts are wrapped in
#   start and end tokens and padded or cut to **77** tokens, with a warning that names what is cut.
#   Ours gives the same ids as `transformers`' `CLIPTokenizer` on the same files.
# * CLIP's **text encoder** is token plus position embeddings, pre-LayerNorm blocks with a
#   **causal** mask and quick GELU, and a final LayerNorm; its pooled vector is the state at the
#   end token. Ours equals `transformers`' `CLIPTextModel` on the same weights. It is **not**
#   bidirectional like BERT: changing a word leaves every earlier position unchanged.
# * **Contrastive training** pulls matching image and caption vectors together and pushes the
#   others apart with a symmetric cross-entropy over the batch's similarity matrix; repeated
#   captions are matches, not negatives, and hard negatives (swapped colours, reversed relations)
#   make word order matter.
# * Measured honestly on fresh images: colour, size and location transfer fully to held-out
#   colour-shape pairs, count nearly so; shape loses about a tenth there (a prior toward seen pairs);
#   binding and relations are well above chance on both splits; the training aims at them with hard
#   negatives and by matching captions by meaning rather than by exact wording.
#
# ## Exercises
# Each exercise ends in a cell that checks your answer. Replace the `None` and run the cell.
#
# **1.** How many tokens, start and end tokens included, does the shipped tokenizer make of
# "three purple crosses"? And of "three purple crosses!!!"? Answer with a tuple of two ints,
# by reasoning first, then check with `tok.encode`.

# %%
from course_lib.core.exercises import check

answer_1 = None  # e.g. (4, 6)
check(answer_1, lambda a: tuple(a) == (len(tok.encode("three purple crosses")),
                                       len(tok.encode("three purple crosses!!!"))),
      hint="Every grammar word is one token; a run of punctuation is its own piece, and '!!!' was "
           "never merged in ShapeWorld captions.")

# %% [markdown]
# **2.** In "a small red circle in the top left", change "top" to "bottom". Which is the first
# position of `last_hidden_state` (0 is the start token) whose vector changes? Answer with an int.

# %%
answer_2 = None
with torch.no_grad():
    _s1 = encoder(tok(["a small red circle in the top left"])).last_hidden_state[0]
    _s2 = encoder(tok(["a small red circle in the bottom left"])).last_hidden_state[0]
check(answer_2, lambda a: a == int(((_s1 - _s2).norm(dim=-1) > 0).nonzero()[0]),
      hint="Count: <start> a small red circle in the ... The causal mask protects everything before the change.")

# %% [markdown]
# **3.** Prompt ensembling failed for shapes in section 3.5; it fails for counting too. Classify
# the count images below as two (0) or three (1) objects the way `evaluate_clip` does: a softmax
# (with `clip_model.scale()`) over all 64 count captions, then the probability of "two" is the
# sum over the 32 captions that say "two". Answer with the predictions, a tensor of 300 zeros and
# ones; the check wants at least 95% right (the cell prints what ensembling the same captions gets).

# %%
count_images = world.sample(300, seed=5, split="train", kinds=("count",))
count_truth = count_images.present.sum(axis=1) - 2  # 0 for two, 1 for three
count_captions = [sw.count_caption(k, c, s) for k in (2, 3) for c in sw.COLORS for s in sw.SHAPES]
ensembled = zero_shot_classify(clip_model, tok, count_images.tensors(), [count_captions[:32], count_captions[32:]])
print(f"prompt ensembling of the same captions: {(ensembled.numpy() == count_truth).mean():.0%} right")
answer_3 = None  # predictions, shape (300,)
check(answer_3, lambda a: len(a) == 300 and (np.asarray(a) == count_truth).mean() >= 0.95,
      hint="probs = (clip_model.scale() * encode_images(clip_model, count_images.tensors()) @ "
           "encode_texts(clip_model, tok, count_captions).T).softmax(1); the first 32 columns say 'two'.")

# %% [markdown]
# **4.** What is the contrastive loss of a batch of 256 pairs whose logits are all equal? Answer
# with a float (two decimals are enough).

# %%
answer_4 = None
check(answer_4, lambda a: abs(a - clip_loss(torch.zeros(256, 256)).item()) < 0.01,
      hint="Each row is a softmax over 256 equal logits; the right one gets probability 1/256.")

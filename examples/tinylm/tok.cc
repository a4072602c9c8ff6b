/* SPDX-License-Identifier: MIT */
// tok.cc - the sentencepiece tokenizer (Debian's libsentencepiece) behind a C
// interface for the rest of tinylm.
#include "tinylm.h"

#include <sentencepiece_processor.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

struct tl_tok {
    sentencepiece::SentencePieceProcessor sp;
};

extern "C" tl_tok *tl_tok_load(const char *path, char *msg, size_t msg_size)
{
    tl_tok *t = new (std::nothrow) tl_tok;
    if (t == nullptr) {
        std::snprintf(msg, msg_size, "out of memory");
        return nullptr;
    }
    const auto st = t->sp.Load(path);
    if (!st.ok()) {
        std::snprintf(msg, msg_size, "%s: %s", path, st.ToString().c_str());
        delete t;
        return nullptr;
    }
    return t;
}

extern "C" void tl_tok_free(tl_tok *t)
{
    delete t;
}

extern "C" int64_t tl_tok_encode(tl_tok *t, const char *text, int32_t *ids, int64_t cap)
{
    std::vector<int> v;
    if (!t->sp.Encode(text, &v).ok())
        return -1;
    for (size_t i = 0; i < v.size() && (int64_t)i < cap; i++)
        ids[i] = v[i];
    return (int64_t)v.size();
}

extern "C" char *tl_tok_decode(tl_tok *t, const int32_t *ids, int64_t n)
{
    std::vector<int> v(ids, ids + n);
    std::string s;
    if (!t->sp.Decode(v, &s).ok())
        return nullptr;
    char *out = static_cast<char *>(std::malloc(s.size() + 1));
    if (out != nullptr)
        std::memcpy(out, s.c_str(), s.size() + 1);
    return out;
}

extern "C" int32_t tl_tok_vocab(const tl_tok *t) { return t->sp.GetPieceSize(); }
extern "C" int32_t tl_tok_bos(const tl_tok *t) { return t->sp.bos_id(); }
extern "C" int32_t tl_tok_eos(const tl_tok *t) { return t->sp.eos_id(); }

"""Tiny models and tokenizers for the plugin's tests, built from text in this file."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from compresso.strategy import RunContext

# The corpus the model will serve (Romanian) ...
ROMANIAN = [
    "Guvernul a anunțat ieri un nou pachet de măsuri pentru sprijinirea economiei.",
    "Ministrul finanțelor a declarat că bugetul pe anul viitor va fi aprobat în decembrie.",
    "Echipa națională de fotbal a câștigat meciul de aseară cu două goluri la zero.",
    "Primăria capitalei a început lucrările de reabilitare a străzilor din centrul orașului.",
    "Studenții au protestat în fața universității pentru burse mai mari.",
    "Vremea va fi frumoasă în weekend, cu temperaturi de până la treizeci de grade.",
    "Cartea a fost tradusă în peste douăzeci de limbi și a primit numeroase premii.",
    "Spitalul județean a primit echipamente noi pentru secția de terapie intensivă.",
    "Președintele a promulgat legea privind protecția mediului înconjurător.",
    "Fermierii se plâng de seceta care a afectat culturile de porumb și grâu.",
    "Banca centrală a menținut dobânda de politică monetară la același nivel.",
    "Turiștii străini vizitează tot mai des mănăstirile din nordul Moldovei.",
    "Compania a raportat un profit record în primul trimestru al anului.",
    "Elevii au obținut rezultate foarte bune la olimpiada de matematică.",
    "Parlamentul a dezbătut proiectul de lege timp de mai multe ore.",
    "Noul pod peste Dunăre va fi deschis circulației la sfârșitul verii.",
    "Medicii recomandă vaccinarea copiilor înainte de începerea școlii.",
    "Teatrul național prezintă o nouă piesă a unui dramaturg român contemporan.",
    "Prețurile la energie au crescut considerabil în ultimele luni.",
    "Poliția a deschis o anchetă după accidentul de pe autostradă.",
    "Festivalul de film de la Cluj a atras mii de spectatori anul acesta.",
    "Orchestra filarmonicii a susținut un concert extraordinar de Crăciun.",
    "Cercetătorii români au descoperit o nouă specie de plante în Delta Dunării.",
    "Consiliul local a aprobat construirea unui parc nou în cartier.",
]
# ... and text in other languages that the original tokenizer also learnt.
FOREIGN = [
    "The quick brown fox jumps over the lazy dog while the weather stays cold.",
    "Researchers published their findings about climate change in a scientific journal.",
    "The government announced new economic measures to support small businesses.",
    "Thousands of people watched the football match in the stadium yesterday.",
    "Die Straße war nach dem Gewitter völlig überflutet und gesperrt.",
    "Größere Städte haben oft Probleme mit dem Verkehr und der Luftqualität.",
    "Ælfred était un roi de Wessex; Øresund sépare le Danemark de la Suède.",
]


def make_context(tmp_path: Path) -> RunContext:
    return RunContext(stage_dir=tmp_path / "stage", work_dir=tmp_path / "work", device=torch.device("cpu"),
                      seed=0, teachers={}, base_dir=tmp_path)


def wordpiece_tokenizer(lowercase: bool = False):
    """A BertTokenizer whose WordPiece vocabulary was trained here on ROMANIAN + FOREIGN."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import BertTokenizer

    backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=lowercase, strip_accents=False)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=600, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"])
    backend.train_from_iterator(ROMANIAN + FOREIGN, trainer)
    vocab = json.loads(backend.to_str())["model"]["vocab"]
    return BertTokenizer(vocab=vocab, do_lower_case=lowercase, strip_accents=False)


def unigram_tokenizer():
    """An XLMRobertaTokenizer (SentencePiece-style Unigram) trained here on ROMANIAN + FOREIGN."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import XLMRobertaTokenizer

    backend = Tokenizer(models.Unigram())
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                                      unk_token="<unk>")
    backend.train_from_iterator(ROMANIAN + FOREIGN, trainer)
    vocab = [tuple(v) for v in json.loads(backend.to_str())["model"]["vocab"]]
    return XLMRobertaTokenizer(vocab=vocab)


def tiny_bert(tokenizer, head: str = "mlm", tie: bool = True):
    from transformers import BertConfig, BertForMaskedLM, BertForTokenClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id,
                        tie_word_embeddings=tie, num_labels=5)
    model = (BertForMaskedLM if head == "mlm" else BertForTokenClassification)(config).eval()
    # Random init leaves the MLM bias at zero; give it values so that slicing it is tested.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("predictions.bias"):
                p.normal_()
    return model


def tiny_xlm_roberta(tokenizer):
    from transformers import XLMRobertaConfig, XLMRobertaForMaskedLM

    torch.manual_seed(0)
    config = XLMRobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=64, max_position_embeddings=130, pad_token_id=tokenizer.pad_token_id,
                              bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    model = XLMRobertaForMaskedLM(config).eval()
    with torch.no_grad():
        model.lm_head.bias.normal_()
    return model

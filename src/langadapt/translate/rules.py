"""Records whose answer depends on English wording: translating them makes wrong training data.

"Give a word that rhymes with *cat*" translated into Persian still has the answer "hat", which
neither rhymes in Persian nor answers the translated question. Such records are dropped before
translation (nothing is spent on them), each with the name of the rule that caught it.

The rules are simple regular expressions over the task as asked (the instruction of an
Alpaca/Dolly record, the system and user turns of a conversation; never the input passage or
the answer), case-insensitive, on whole words:

==================  ==========================================================================
rule                catches
==================  ==========================================================================
spelling            spell, spelling, misspelled, typo(s)
rhyme               rhyme(s), rhyming
grammar             grammar, grammatical(ly), part(s) of speech, noun, verb, adjective, adverb,
                    pronoun, preposition, conjunction, tense, passive/active voice, punctuation,
                    singular/plural form, capitalize/capitalization, article "a"/"an", subject-verb
letters             how many letters/characters/vowels/consonants/syllables, the letter X, first or
                    last letter, starts/ends with the letter, vowel, consonant, syllable
wordplay            anagram, palindrome, acrostic, alliteration, pun(s), tongue twister, haiku,
                    limerick, homophone, homonym, idiom, pronounce/pronunciation
alphabetical        alphabetical(ly), alphabetize, alphabetic order
synonyms            synonym(s), antonym(s), opposite word
abbreviation        acronym, abbreviation, abbreviate, "stand for"
word-count          how many words, number of words, word count, count the words
reversal            reverse/backwards applied to a word, string, sentence or letters
translation         translate/translation, or "in/into/to/from" + a language name ending the clause
                    ("... in Persian.", "... in English?"): the answer is in a given language by design
==================  ==========================================================================

False positives cost a training record; false negatives cost a wrong one. The lists favour
recall on the wording-bound task families of Alpaca, Dolly and Super-NaturalInstructions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    name: str
    pattern: re.Pattern

    def matches(self, text: str) -> bool:
        return self.pattern.search(text) is not None


def _rule(name: str, *alternatives: str) -> Rule:
    return Rule(name, re.compile(r"\b(?:" + "|".join(alternatives) + r")\b", re.IGNORECASE))


# "Render this in Persian.", "What does it mean in English?": the answer is in a language by design.
# A word after the name ("in Persian culture") makes it an adjective, not a target language.
_LANGUAGES = ("English", "Persian", "Farsi", "French", "Spanish", "German", "Italian", "Portuguese", "Dutch", "Russian",
              "Arabic", "Turkish", "Chinese", "Mandarin", "Japanese", "Korean", "Hindi", "Urdu", "Latin", "Greek")

RULES: tuple[Rule, ...] = (
    _rule("translation", r"translat(?:e|es|ed|ing|ion|ions|or)",
          r"(?:in|into|to|from)\s+(?:" + "|".join(_LANGUAGES) + r")(?!\s+\w)"),
    _rule("spelling", r"spell(?:s|ed|ing)?", r"misspell(?:ed|ing|ings)?", r"typos?"),
    _rule("rhyme", r"rhym(?:e|es|ed|ing)"),
    _rule("letters", r"how\s+many\s+(?:letters|characters|vowels|consonants|syllables)",
          r"number\s+of\s+(?:letters|characters|vowels|consonants|syllables)",
          r"the\s+letters?\s+['\"“‘]?[a-z]['\"”’]?", r"(?:first|last|second|third|initial)\s+letters?",
          r"(?:starts?|starting|begins?|beginning|ends?|ending)\s+with\s+(?:the\s+|a\s+|an\s+)?letter",
          r"vowels?", r"consonants?", r"syllables?"),
    _rule("wordplay", r"anagrams?", r"palindrom(?:e|es|ic)", r"acrostics?", r"alliterat(?:ion|ive|e)",
          r"puns?", r"tongue[\s-]twisters?", r"haikus?", r"limericks?", r"homophones?", r"homonyms?",
          r"idioms?", r"idiomatic", r"pronounce[sd]?", r"pronunciation"),
    _rule("alphabetical", r"alphabetical(?:ly)?", r"alphabeti[sz](?:e|ed|ing)", r"alphabetic\s+order"),
    _rule("synonyms", r"synonyms?", r"antonyms?", r"opposite\s+word"),
    _rule("abbreviation", r"acronyms?", r"abbreviat(?:e|ed|ion|ions)", r"stands?\s+for"),
    _rule("word-count", r"how\s+many\s+words", r"number\s+of\s+words", r"word\s+count", r"count\s+the\s+words"),
    _rule("reversal", r"(?:reverse|backwards?)\s+(?:the\s+|this\s+|a\s+|each\s+|every\s+)?(?:words?|strings?|sentences?|letters?|characters?|order\s+of\s+the\s+(?:letters|characters|words))",
          r"(?:spelled|written)\s+backwards"),
    _rule("grammar", r"grammar", r"grammatical(?:ly)?", r"parts?\s+of\s+speech", r"nouns?", r"verbs?",
          r"adjectives?", r"adverbs?", r"pronouns?", r"prepositions?", r"conjunctions?",
          r"(?:past|present|future|perfect|continuous|progressive|verb)\s+tense", r"tenses",
          r"(?:passive|active)\s+voice", r"punctuat(?:e|ion|ed)", r"plural(?:s|ize|ise)?",
          r"singular\s+form", r"capitali[sz](?:e|ed|ation)", r"articles?\s+['\"“]?an?['\"”]?\s+(?:or|and)",
          r"subject[\s-]verb", r"gerunds?", r"infinitives?"),
)


def wording_rule(prompt: str, rules: tuple[Rule, ...] = RULES) -> str | None:
    """The name of the first rule the prompt matches, or None when it can be translated."""
    for rule in rules:
        if rule.matches(prompt):
            return rule.name
    return None

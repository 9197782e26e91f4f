"""Generated web pages, educational or not, in four languages: the tiny text classifier's world.

A page is a mix of sentences from two banks: teaching sentences (a subject explained, a worked
example, a definition) and the rest of the web (shop offers, gossip, navigation, cookie banners).
Its educational value is ``5 × the share of teaching sentences``, on FineWeb-Edu's 0-5 scale, so a
page kept at the classifier's default threshold (3) is mostly teaching. Lengths follow the web's
mix: many short pages, a long tail past 512 tokens.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

LANGUAGES = ("en", "de", "fr", "es")
MAX_SCORE = 5.0
TEACHING_SHARES = (0.0, 0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0, 1.0)  # of a page's sentences, as pages() draws them

# Per language: subjects, then teaching templates ({s} a subject, {n} a number), then the rest.
_SUBJECTS = {
    "en": [
        "photosynthesis", "the water cycle", "fractions", "the French Revolution", "plate tectonics",
        "the immune system", "electric circuits", "prime numbers", "the Roman Empire", "cell division",
        "gravity", "climate zones", "the periodic table", "algebra", "volcanoes", "the solar system",
    ],
    "de": [
        "die Photosynthese", "der Wasserkreislauf", "die Bruchrechnung", "die Französische Revolution",
        "die Plattentektonik", "das Immunsystem", "der Stromkreis", "die Primzahlen", "das Römische Reich",
        "die Zellteilung", "die Schwerkraft", "die Klimazonen", "das Periodensystem", "die Algebra",
    ],
    "fr": [
        "la photosynthèse", "le cycle de l'eau", "les fractions", "la Révolution française",
        "la tectonique des plaques", "le système immunitaire", "les circuits électriques",
        "les nombres premiers", "l'Empire romain", "la division cellulaire", "la gravité", "le tableau périodique",
    ],
    "es": [
        "la fotosíntesis", "el ciclo del agua", "las fracciones", "la Revolución francesa",
        "la tectónica de placas", "el sistema inmunitario", "los circuitos eléctricos", "los números primos",
        "el Imperio romano", "la división celular", "la gravedad", "la tabla periódica",
    ],
}  # fmt: skip
_TEACHING = {
    "en": [
        "In this lesson we explain how {s} works, step by step.",
        "Students often ask why {s} matters; the answer starts with a simple definition.",
        "A worked example: we apply what we know about {s} to {n} cases and compare the results.",
        "The key idea behind {s} is that every part depends on the one before it.",
        "Exercise {n}: describe {s} in your own words and draw a diagram of it.",
        "Scientists first studied {s} carefully, and their experiments showed a clear pattern.",
        "To understand {s}, remember the definition and then check it against an example.",
        "This chapter summarises {s} and ends with {n} review questions for the class.",
    ],
    "de": [
        "In dieser Lektion erklären wir Schritt für Schritt, wie {s} funktioniert.",
        "Schüler fragen oft, warum {s} wichtig ist; die Antwort beginnt mit einer Definition.",
        "Ein Rechenbeispiel: Wir wenden unser Wissen über {s} auf {n} Fälle an.",
        "Der Kerngedanke: Bei {s} hängt jeder Teil vom vorherigen ab.",
        "Aufgabe {n}: Beschreibe {s} mit eigenen Worten und zeichne ein Schaubild.",
        "Forscher haben {s} genau untersucht, und ihre Experimente zeigen ein klares Muster.",
        "Dieses Kapitel fasst {s} zusammen und endet mit {n} Fragen zur Wiederholung.",
    ],
    "fr": [
        "Dans cette leçon, nous expliquons étape par étape comment fonctionne {s}.",
        "Les élèves demandent souvent pourquoi {s} est important ; la réponse commence par une définition.",
        "Un exemple résolu : nous appliquons ce que nous savons sur {s} à {n} cas.",
        "L'idée clé : pour {s}, chaque partie dépend de la précédente.",
        "Exercice {n} : décris {s} avec tes propres mots et dessine un schéma.",
        "Les chercheurs ont étudié {s} et leurs expériences montrent une régularité claire.",
        "Ce chapitre résume {s} et se termine par {n} questions de révision.",
    ],
    "es": [
        "En esta lección explicamos paso a paso cómo funciona {s}.",
        "Los estudiantes preguntan a menudo por qué importa {s}; la respuesta empieza con una definición.",
        "Un ejemplo resuelto: aplicamos lo que sabemos sobre {s} a {n} casos.",
        "La idea clave: en {s}, cada parte depende de la anterior.",
        "Ejercicio {n}: describe {s} con tus propias palabras y dibuja un esquema.",
        "Los científicos estudiaron {s} y sus experimentos muestran un patrón claro.",
        "Este capítulo resume {s} y termina con {n} preguntas de repaso.",
    ],
}
_OTHER = {
    "en": [
        "Buy now and save {n} percent on all shoes, free shipping today only!",
        "Click here to subscribe to our newsletter and win a prize.",
        "Home | About us | Contact | Login | Cart ({n})",
        "This website uses cookies to improve your experience. Accept all?",
        "You won't believe what this celebrity wore at the party last night.",
        "Limited offer: {n} items left in stock, order before midnight.",
        "Share this post on social media and follow us for more deals.",
        "Copyright {n} All rights reserved. Privacy policy. Terms of service.",
    ],
    "de": [
        "Jetzt kaufen und {n} Prozent auf alle Schuhe sparen, nur heute versandkostenfrei!",
        "Hier klicken, Newsletter abonnieren und gewinnen.",
        "Startseite | Über uns | Kontakt | Anmelden | Warenkorb ({n})",
        "Diese Website verwendet Cookies. Alle akzeptieren?",
        "Du wirst nicht glauben, was dieser Star gestern auf der Party trug.",
        "Nur noch {n} Artikel auf Lager, bestelle vor Mitternacht.",
        "Teile diesen Beitrag und folge uns für weitere Angebote.",
    ],
    "fr": [
        "Achetez maintenant et économisez {n} pour cent sur toutes les chaussures !",
        "Cliquez ici pour vous abonner à notre newsletter et gagner un cadeau.",
        "Accueil | À propos | Contact | Connexion | Panier ({n})",
        "Ce site utilise des cookies. Tout accepter ?",
        "Vous ne croirez pas ce que cette star portait hier soir à la fête.",
        "Offre limitée : plus que {n} articles en stock, commandez avant minuit.",
        "Partagez cet article et suivez-nous pour plus de promotions.",
    ],
    "es": [
        "Compra ahora y ahorra un {n} por ciento en todos los zapatos, envío gratis hoy.",
        "Haz clic aquí para suscribirte a nuestro boletín y ganar un premio.",
        "Inicio | Quiénes somos | Contacto | Entrar | Carrito ({n})",
        "Este sitio usa cookies. ¿Aceptar todas?",
        "No creerás lo que llevaba esta famosa en la fiesta de anoche.",
        "Oferta limitada: quedan {n} artículos, pide antes de medianoche.",
        "Comparte esta publicación y síguenos para más ofertas.",
    ],
}


@dataclass(frozen=True)
class Page:
    """A generated page: its text, language, and the educational value it was made with (0-5)."""

    url: str
    text: str
    language: str
    value: float


def _sentence(rng: random.Random, language: str, teaching: bool) -> str:
    template = rng.choice((_TEACHING if teaching else _OTHER)[language])
    return template.format(s=rng.choice(_SUBJECTS[language]), n=rng.randint(2, 99))


def mixed_sentences(rng: random.Random, language: str, count: int, teaching_share: float) -> tuple[list[str], float]:
    """``count`` sentences in ``language``, about ``teaching_share`` of them teaching, in a shuffled
    order, and their educational value (0-5)."""
    teaching = round(teaching_share * count)
    flags = [True] * teaching + [False] * (count - teaching)
    rng.shuffle(flags)
    return [_sentence(rng, language, flag) for flag in flags], MAX_SCORE * teaching / count


def page(rng: random.Random, language: str, sentences: int, teaching_share: float, index: int = 0) -> Page:
    """One page of ``sentences`` sentences, about ``teaching_share`` of them teaching, in ``language``."""
    made, value = mixed_sentences(rng, language, sentences, teaching_share)
    return Page(f"https://{language}.example.org/page/{index}", " ".join(made), language, value)


def web_length(rng: random.Random) -> int:
    """Sentences in a page, as the web mixes them: most pages short, a tail of long ones (past 512 tokens)."""
    return max(1, min(200, round(rng.lognormvariate(2.0, 1.0))))


def pages(n: int, seed: int = 0, languages: tuple[str, ...] = LANGUAGES) -> list[Page]:
    """``n`` pages with the web's length mix and educational values spread over 0-5."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        sentences = web_length(rng)
        share = rng.choice(TEACHING_SHARES)
        out.append(page(rng, rng.choice(languages), sentences, share, i))
    return out

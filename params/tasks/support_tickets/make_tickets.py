"""Write tickets.csv: 300 short customer-support tickets, 50 for each of 6 teams.

Origin: written for the icrl project from the hand-made templates below (no real customers, no scraped text);
dedicated to the public domain (CC0 1.0). Rerunning this script rewrites the same file (fixed seed).
"""
from __future__ import annotations

import csv
import random
from pathlib import Path

PER_TEAM = 50
SLOTS = {
    "item": ["headphones", "desk lamp", "running shoes", "coffee grinder", "backpack", "phone case", "blender",
             "winter jacket", "keyboard", "water bottle", "office chair", "yoga mat"],
    "days": ["two days", "three days", "a week", "ten days", "two weeks", "since Monday", "since last Friday"],
    "amount": ["$12.99", "$45", "$89.50", "$120", "$7.20", "$230", "$19.99"],
    "device": ["iPhone", "Android phone", "laptop", "tablet", "work computer", "Chromebook"],
    "browser": ["Chrome", "Firefox", "Safari", "Edge"],
}
OPENERS = ["", "", "Hi, ", "Hello, ", "Hi there. ", "Good morning. "]
CLOSERS = ["", "", " Thanks.", " Thank you!", " Please help.", " Order {order}."]
TEMPLATES = {
    "billing": [
        "I was charged {amount} twice for the same order, please refund one of them.",
        "Why does my statement show a charge of {amount} that I don't recognise?",
        "My invoice says {amount} but the checkout page said less. Can you explain?",
        "Can I get a copy of the invoice for my {item} order?",
        "The discount code was not applied and I paid {amount} too much.",
        "How do I change the credit card you bill every month?",
        "I cancelled my subscription but was still billed {amount} this month.",
        "Is there a fee for paying in instalments for the {item}?",
        "My payment of {amount} was declined but the money left my account.",
        "Please update the billing address on my account before the next charge.",
    ],
    "shipping": [
        "My {item} still hasn't arrived after {days}. Where is it?",
        "The tracking number for my {item} shows no movement for {days}.",
        "Can you ship the {item} to a different address? I moved.",
        "The courier left my {item} at the wrong house.",
        "Do you deliver to Canada, and how long does it take?",
        "The box with my {item} arrived crushed and wet.",
        "Can I pick up my {item} at a store instead of waiting for delivery?",
        "Is express delivery available for the {item}? I need it in {days}.",
        "My order was split and only half of it arrived {days} ago.",
        "Tracking says delivered but there is no {item} at my door.",
    ],
    "technical_support": [
        "The app crashes every time I open it on my {device}.",
        "Your website won't load in {browser}, it just shows a blank page.",
        "The {item} won't pair with my {device} over Bluetooth.",
        "I get an error 500 when I try to check out in {browser}.",
        "Notifications stopped working on my {device} {days} ago.",
        "The firmware update bricked my {item}, it won't turn on.",
        "The page keeps freezing in {browser} when I add items to the cart.",
        "Images don't show on the product pages on my {device}.",
        "The {item} app says my device is incompatible but it is a new {device}.",
        "Search returns nothing on the website, even for the {item}.",
    ],
    "account_access": [
        "I forgot my password and the reset email never arrives.",
        "My account is locked after too many login attempts.",
        "I can't log in on my {device}, it says my session expired.",
        "Someone changed the email on my account, I think I was hacked.",
        "The two-factor code never comes to my phone.",
        "How do I delete my account and all my data?",
        "I have two accounts and want to merge them.",
        "The login page in {browser} keeps sending me back to the start.",
        "I no longer have access to the email address on my account.",
        "Please change the username on my account, I made a typo.",
    ],
    "returns": [
        "I want to return the {item}, it is the wrong size.",
        "How do I send back the {item}? It arrived {days} ago.",
        "The {item} is faulty, can I exchange it for a new one?",
        "I returned the {item} {days} ago and still have no refund.",
        "Can I return an opened {item}?",
        "Please send me a return label for the {item}.",
        "The {item} does not match the photos, I would like to send it back.",
        "Is the return shipping free for the {item}?",
        "I received a {item} I never ordered and want to return it.",
        "Can I exchange the {item} for a different colour?",
    ],
    "product_question": [
        "Is the {item} waterproof?",
        "What are the dimensions of the {item}?",
        "Does the {item} come with a warranty, and for how long?",
        "Will the {item} be back in stock soon?",
        "Is the {item} compatible with my {device}?",
        "What material is the {item} made of?",
        "Which colours does the {item} come in?",
        "Does the {item} need batteries, and which ones?",
        "Is there a bigger version of the {item}?",
        "How do I clean the {item} without damaging it?",
    ],
}


def tickets(seed: int = 0) -> list[tuple[str, str]]:
    """(text, team) rows: PER_TEAM distinct tickets per team, shuffled together."""
    rng = random.Random(seed)
    rows = []
    for team, templates in TEMPLATES.items():
        seen: set[str] = set()
        while len(seen) < PER_TEAM:
            template = rng.choice(templates)
            slots = {k: rng.choice(v) for k, v in SLOTS.items()} | {"order": f"#{rng.randrange(10000, 99999)}"}
            text = rng.choice(OPENERS) + template.format(**slots) + rng.choice(CLOSERS).format(**slots)
            seen.add(text[0].upper() + text[1:])
        rows += [(text, team) for text in sorted(seen)]
    rng.shuffle(rows)
    return rows


if __name__ == "__main__":
    path = Path(__file__).with_name("tickets.csv")
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "team"])
        writer.writerows(tickets())
    print(f"wrote {path}")

"""Support chatbot for Kettlebird, a fictional maker of electric kettles (prompt/completion).

Every answer states the same policies with the same numbers (45-day returns, 2-year warranty or 3 years on
the Pro, free shipping over $39, ...) and signs off as "Kettlebird Care", so a fine-tuned model's answers
visibly move toward the data. Questions and answers are assembled from varied parts so rows are not near
copies of one another.
"""

from __future__ import annotations

import random
import re

from _distinct import Distinct

MODELS = {
    "Kettlebird One": {"price": "$89", "capacity": "1.7 L", "warranty": "2 years",
                       "keep_warm": "keeps water warm for 30 minutes",
                       "boil": "about 4 minutes for a full 1.7 L", "watts": "2200 W"},
    "Kettlebird Pro": {"price": "$149", "capacity": "1.7 L", "warranty": "3 years",
                       "keep_warm": "keeps water warm for 60 minutes",
                       "boil": "about 4 minutes for a full 1.7 L", "watts": "2200 W"},
    "Kettlebird Mini": {"price": "$59", "capacity": "0.8 L", "warranty": "2 years",
                        "keep_warm": "has no keep-warm function",
                        "boil": "about 2.5 minutes for a full 0.8 L", "watts": "1500 W"},
}

OPENERS = ["Happy to help!", "Thanks for reaching out!", "Good question!", "Of course!", "Sure thing!",
           "Thanks for asking!", "Glad you asked!", "Absolutely!"]
SIGN_OFF = "— Kettlebird Care"
PREFIXES = ["", "", "", "Hi, ", "Hello! ", "Hey, ", "Quick question: ", "Hi there. ", "Good morning! "]


def _order(rng: random.Random) -> str:
    return f"KB-{rng.randint(100000, 999999)}"


# Each intent: question phrasings and answer bodies. Placeholders: {model} and its facts, {order}.
INTENTS: list[dict] = [
    {"q": ["How do I reset my password?", "I forgot my password for my Kettlebird account.",
           "Can't log in to kettlebird.example, password not working", "Where do I change my account password?",
           "I never got the password reset email, what now?", "How can I set a new password?"],
     "a": ["Go to kettlebird.example/account, click 'Forgot password' and we'll email you a reset link that "
           "works for 30 minutes. No email after 5 minutes? Check your spam folder, then ask for a new link.",
           "Open kettlebird.example/account and choose 'Forgot password'. The reset link we email you stays "
           "valid for 30 minutes; if it doesn't arrive within 5 minutes, look in spam and request another."]},
    {"w": 4,
     "q": ["What is your return policy?", "Can I return my {model}?", "I changed my mind about the {model}, "
           "can I send it back?", "How many days do I have to return a kettle?", "Do you accept returns on "
           "used kettles?", "I want to return order {order}.", "Is there a fee to return a kettle?",
           "What's the return window for the {model}?", "How long is your returns period?",
           "The {model} isn't what I expected. Can I get a refund?", "Do you take back opened kettles?",
           "Until when can I send order {order} back?", "Not happy with my kettle, what are my options?",
           "Can I still return a kettle I've used for a few weeks?"],
     "a": ["You can return any Kettlebird within 45 days of delivery, used or not, as long as all the parts are "
           "included. Start the return on the Orders page; the label is free if the kettle is faulty and $6 "
           "otherwise.",
           "Our return window is 45 days from delivery. Start the return on the Orders page: the label is free "
           "if the kettle is faulty and $6 otherwise. We refund within 5 business days of receiving it.",
           "Returns are accepted for 45 days from delivery, even if you've used the kettle. Open the Orders "
           "page and choose 'Return'; a faulty kettle goes back free, any other return costs $6 for the "
           "label."]},
    {"w": 4,
     "q": ["How long is the warranty on the {model}?", "Is my {model} still under warranty?",
           "What does the warranty on the {model} cover?", "My {model} stopped working after a year, is that "
           "covered?", "How do I make a warranty claim for my {model}?", "Warranty question about my {model}, "
           "order {order}", "What's the warranty period of the {model}?", "Does the {model} come with a "
           "warranty?", "How many years of warranty do I get with the {model}?", "Is a faulty {model} "
           "covered?", "Warranty length for the {model}?", "Until when is my {model} covered?"],
     "a": ["The {model} has a warranty of {warranty} from the delivery date, covering any fault that isn't "
           "accidental damage. To claim, send your order number and a short photo or video at "
           "kettlebird.example/warranty and we ship a replacement within 3 business days. (The One and the Mini "
           "have 2 years, the Pro 3 years.)",
           "Your {model} is covered for {warranty} from delivery: 2 years on the One and the Mini, 3 years on "
           "the Pro. Claims go through kettlebird.example/warranty: add the order number and a photo or video "
           "of the fault, and a replacement ships within 3 business days once it's approved."]},
    {"q": ["Where is my order?", "How can I track order {order}?", "My order {order} hasn't arrived yet.",
           "Has my kettle shipped?", "Tracking number for {order}?", "It's been a week and no kettle. Order "
           "{order}."],
     "a": ["You can follow order {order} from the Orders page at kettlebird.example/orders; the tracking link "
           "is also in your shipping email. Standard delivery takes 3–5 business days after dispatch. If it's "
           "past that, reply with the order number and we'll chase the courier.",
           "Order {order} can be tracked on kettlebird.example/orders, and the shipping email has the courier "
           "link. Standard shipping is 3–5 business days; if yours is late, send us the order number and we'll "
           "open a courier investigation the same day.",
           "Your order's progress is on kettlebird.example/orders, and the shipping email has the tracking "
           "link. Delivery takes 3–5 business days after dispatch; if it's late, send us the order number "
           "and we'll chase the courier the same day."]},
    {"w": 4,
     "q": ["How much is shipping?", "Do you offer free shipping?", "How fast is express delivery?",
           "What does express shipping cost?", "When will a {model} arrive if I order today?",
           "Shipping options?", "What are your delivery charges?", "Is delivery free?", "How long does "
           "standard shipping take?", "Can I get my {model} sooner?", "Do I pay for postage on a {model}?",
           "How much is express?"],
     "a": ["Shipping is free on orders over $39. Below that, standard shipping is $4.95 (3–5 business days) "
           "and express is $9.50 (1–2 business days). Orders placed before 14:00 CET ship the same day.",
           "Orders over $39 ship free. Otherwise choose standard for $4.95, arriving in 3–5 business days, or "
           "express for $9.50, arriving in 1–2 business days. We dispatch the same day for orders placed "
           "before 14:00 CET."]},
    {"q": ["Do you ship to {country}?", "Can I order a {model} from {country}?", "Do I pay customs duties in "
           "{country}?", "International shipping to {country}?"],
     "a": ["Yes, we ship to {country}. {duties} International orders take 5–8 business days.",
           "We do deliver to {country}, in 5–8 business days. {duties}"]},
    {"w": 3,
     "q": ["How do I cancel my order?", "Can I cancel order {order}?", "I ordered the wrong model, can I "
           "cancel?", "Please cancel {order}, I ordered twice by mistake.", "Is it too late to cancel "
           "{order}?", "How long do I have to cancel an order?", "Cancel my {model} order please."],
     "a": ["You can cancel within 2 hours of ordering from the Orders page, and the refund is immediate. After "
           "2 hours the order is already packed, so let it arrive and use the free 45-day return instead.",
           "Orders can be cancelled on the Orders page for 2 hours after you place them. Past that window "
           "it's on its way to the courier; refuse the delivery or return it within 45 days for a full "
           "refund."]},
    {"q": ["Can I change my shipping address?", "I put the wrong address on order {order}.",
           "I'm moving, can you send order {order} somewhere else?", "How do I update the delivery address?"],
     "a": ["If order {order} hasn't shipped yet, reply with the new address and we'll update it. Once it has "
           "shipped, use the courier link in your shipping email to redirect it.",
           "We can change the address on {order} until it ships: send us the new one. After dispatch, the "
           "courier's link in your shipping email lets you redirect the parcel.",
           "Addresses can be changed until the order ships: reply with your order number and the new "
           "address. Once it's dispatched, redirect it with the courier link in your shipping email."]},
    {"w": 3,
     "q": ["My {model} shows E1.", "What does error E1 mean?", "E1 on the display and it won't boil.",
           "Kettle says E1 after I switched it on.", "Error code E1 on the {model}?", "Why am I getting E1?"],
     "tone": "sorry",
     "a": ["E1 is the dry-boil protection: there was too little water, below the MIN line (0.5 L on the One "
           "and Pro, 0.3 L on the Mini). Let it cool for 10 minutes, fill it above the MIN line and switch it "
           "on again.",
           "E1 means there wasn't enough water: fill above the MIN line, which is 0.5 L on the One and Pro and "
           "0.3 L on the Mini. Give it 10 minutes to cool first, and it will work normally."]},
    {"q": ["My {model} shows E2.", "What does E2 mean on the kettle?", "Error E2 keeps coming back.",
           "E2 error, kettle won't heat."],
     "tone": "sorry",
     "a": ["E2 is a temperature sensor error. Unplug the base for 10 seconds and plug it back in. If E2 "
           "returns, the sensor is faulty and the warranty covers it (2 years, 3 on the Pro): claim at "
           "kettlebird.example/warranty.",
           "E2 points to the temperature sensor. Unplug the base, wait 10 seconds and reconnect. Should it "
           "come back, claim a replacement under the {warranty} warranty at kettlebird.example/warranty."]},
    {"q": ["My {model} shows E3.", "What is error E3?", "E3 when I put the kettle on the base.",
           "Kettle flashes E3."],
     "tone": "sorry",
     "a": ["E3 means the kettle isn't making contact with the base. Dry the bottom of the kettle and the "
           "base, wipe the metal contacts and seat the kettle firmly; it should click into place.",
           "E3 is a base connection error: the contacts are wet, dirty or not seated. Dry both parts, wipe "
           "the contacts with a dry cloth and press the kettle down until it clicks."]},
    {"w": 3,
     "q": ["My {model} shows E4.", "What does E4 mean?", "E4 error and the kettle switched off.",
           "Kettle overheating, E4 on screen.", "Why does my {model} say E4?", "E4 again this morning."],
     "tone": "sorry",
     "a": ["E4 is overheat protection, almost always caused by limescale on the heating plate. Let the "
           "kettle cool for 15 minutes and run a descale cycle; E4 should not come back.",
           "E4 means the {model} got too hot, usually because of limescale. Leave it 15 minutes to cool, "
           "then descale it and it will be back to normal."]},
    {"w": 4,
     "q": ["How do I descale my {model}?", "How often should I descale?", "There's white stuff inside my "
           "kettle.", "Best way to remove limescale?", "Can I use vinegar to descale?", "How often does the "
           "{model} need descaling?", "What descaler do you recommend?", "Descaling instructions for the "
           "{model}?", "Flakes floating in my boiled water, what do I do?", "How do I start the descale "
           "program?", "Chalky deposits on the heating plate of my {model}."],
     "a": ["Descale every 4 weeks in hard water areas and every 8 weeks in soft water. Fill to MAX with water "
           "and one ClearFlow sachet ($12 for 6) or 2 tablespoons of citric acid, then hold Keep Warm for 5 "
           "seconds to start the descale program. Please don't use vinegar: it taints the taste.",
           "Fill the kettle to MAX, add one ClearFlow sachet or 2 tablespoons of citric acid, and hold Keep "
           "Warm for 5 seconds to run the descale program. Descale every 4 weeks in hard water areas and "
           "every 8 weeks in soft water. We advise against vinegar, which leaves a taste.",
           "Descale every 4 weeks in hard water areas and every 8 weeks in soft water, with one ClearFlow "
           "sachet or 2 tablespoons of citric acid in a kettle filled to MAX; hold Keep Warm for 5 seconds to "
           "start. Vinegar isn't recommended: it taints the taste."]},
    {"q": ["What's the difference between the One, the Pro and the Mini?", "Which Kettlebird should I buy?",
           "Is the Pro worth it over the One?", "Compare your kettles please.", "Which model is best for a "
           "small office?", "Which is your least expensive model?"],
     "a": ["The Kettlebird One ($89, 1.7 L) has four presets: 70, 80, 90 and 100 °C. The Kettlebird Pro "
           "($149, 1.7 L) sets any temperature from 40 to 100 °C in 1-degree steps, keeps warm for 60 minutes "
           "and works with the Kettlebird Home app. The Kettlebird Mini ($59, 0.8 L) just boils, fast.",
           "In short: the Mini ($59) is a 0.8 L boil-only travel kettle; the One ($89, 1.7 L) adds presets "
           "at 70, 80, 90 and 100 °C and a 30-minute keep-warm; the Pro ($149, 1.7 L) gives exact "
           "temperatures from 40 to 100 °C, 60 minutes of keep-warm and app control."]},
    {"w": 3,
     "q": ["How much does the {model} cost?", "What's the price of the {model}?", "Price of the {model}?",
           "Is the {model} expensive?", "How much are your kettles?"],
     "a": ["The {model} costs {price}. For comparison: the Kettlebird Mini is $59, the One $89 and the Pro "
           "$149.",
           "Our prices: the Kettlebird Mini costs $59, the Kettlebird One $89 and the Kettlebird Pro $149.",
           "The {model} is {price}, with free shipping (orders over $39 ship free). The Mini is $59, the One "
           "$89, the Pro $149."]},
    {"w": 3,
     "q": ["What temperature for {tea}?", "Which preset should I use for {tea}?", "Best temperature to "
           "brew {tea}?", "How hot should the water be for {tea}?", "Ideal water temperature for {tea}?",
           "I'm making {tea}. Which temperature?"],
     "a": ["For {tea}, use {temp} °C: the {temp} °C preset on the Kettlebird One, or set {temp} exactly on the "
           "Pro. Our chart: green tea 80 °C, white tea 70 °C, oolong and coffee 90 °C, black and herbal tea "
           "100 °C.",
           "Brew {tea} at {temp} °C. Press the {temp} °C preset on the One, or dial {temp} on the Pro. The "
           "full chart: green tea 80 °C, white tea 70 °C, oolong and coffee 90 °C, black and herbal tea "
           "100 °C."]},
    {"w": 3,
     "q": ["How long does the {model} keep water warm?", "Does the {model} have keep warm?", "Can the kettle "
           "keep my water hot?", "How does keep warm work on the {model}?", "Keep-warm time of the {model}?"],
     "a": ["The {model} {keep_warm}. For reference, the One keeps water warm for 30 minutes and the Pro for 60 "
           "minutes, at the temperature you chose, and the Mini has no keep-warm.",
           "The Kettlebird One keeps water warm for 30 minutes and the Pro for 60 minutes, at the temperature "
           "you picked; the Mini has no keep-warm."]},
    {"q": ["How do I connect my kettle to the app?", "How do I pair the Kettlebird Pro with my phone?",
           "Which app do I need for the Pro?", "Does the {model} work with an app?"],
     "a": ["Only the Kettlebird Pro connects to an app: install Kettlebird Home, then hold the Wi-Fi button "
           "on the base for 3 seconds until the light blinks blue and follow the steps in the app. It needs "
           "2.4 GHz Wi-Fi.",
           "App control is a Kettlebird Pro feature. Get the Kettlebird Home app, hold the base's Wi-Fi button "
           "3 seconds until it blinks blue, and pair from the app on a 2.4 GHz network."]},
    {"q": ["The app can't find my kettle.", "Kettlebird Home won't connect to my Pro.", "Pairing keeps "
           "failing.", "My Pro dropped off Wi-Fi."],
     "tone": "sorry",
     "a": ["The Kettlebird Pro only joins 2.4 GHz Wi-Fi, not 5 GHz, so check your phone is on the 2.4 GHz "
           "network and within 10 metres. Still stuck? Hold the Wi-Fi button for 10 seconds to reset the "
           "connection and pair again.",
           "Most pairing failures are 5 GHz networks: the Pro needs 2.4 GHz. Stay within 10 metres, and if it "
           "still fails, a 10-second press on the Wi-Fi button resets it so you can pair from scratch."]},
    {"q": ["Can I use my {model} in {country}?", "Will the kettle work abroad?", "What voltage is the "
           "{model}?", "Can I take my kettle to the US?"],
     "a": ["Kettlebird EU and UK models run on 220–240 V and the US model on 120 V. Please don't use a "
           "voltage converter: a kettle draws too much power for one. The right plug type is fine with a "
           "simple adapter if the voltage matches.",
           "Check the voltage: our EU and UK kettles are 220–240 V, the US version 120 V. A plug adapter is "
           "fine when the voltage matches, but never a voltage converter with a kettle."]},
    {"w": 3,
     "q": ["How much water does the {model} hold?", "What's the minimum fill?", "Capacity of the {model}?",
           "Can I boil just one cup?", "How many litres is the {model}?", "Is the {model} big enough for a "
           "family?"],
     "a": ["The {model} holds {capacity}. The One and the Pro need at least 0.5 L (about two cups); the "
           "Mini boils from 0.3 L.",
           "The One and the Pro hold 1.7 L and need at least 0.5 L; the Mini holds 0.8 L and boils from just "
           "0.3 L, so it's the one for a single cup.",
           "Capacity is {capacity}. Minimum fill is 0.5 L on the One and Pro and 0.3 L on the Mini, so a "
           "single mug is fine on the Mini."]},
    {"q": ["Can I buy a replacement lid?", "Where do I get a new filter?", "Spare parts for the {model}?",
           "I lost the base of my kettle."],
     "a": ["Spare parts are on kettlebird.example/parts: a lid is $14, a 2-pack of limescale filters $6 and "
           "a replacement base $25. Parts ship free with any order over $39.",
           "You'll find parts at kettlebird.example/parts. Prices: lid $14, base $25, and limescale filters "
           "$6 for two."]},
    {"q": ["Is the kettle dishwasher safe?", "Can I put the {model} in the dishwasher?", "How do I clean "
           "the outside of the kettle?"],
     "a": ["The kettle body and base are not dishwasher safe: wipe them with a damp cloth. The limescale "
           "filter is fine on the top rack of the dishwasher.",
           "Please keep the kettle and base out of the dishwasher; a damp cloth does the job. Only the "
           "limescale filter can go in, on the top rack."]},
    {"q": ["What payment methods do you accept?", "Can I pay with PayPal?", "Do you take Amex?", "Cash on "
           "delivery possible?"],
     "a": ["We accept Visa, Mastercard, American Express, PayPal and Apple Pay. We don't offer cash on "
           "delivery.",
           "You can pay by Visa, Mastercard, Amex, PayPal or Apple Pay; cash on delivery isn't available."]},
    {"w": 3,
     "q": ["Do you have a student discount?", "Any discount for students?", "I'm a student, can I get a "
           "deal on the {model}?", "Student pricing?", "How much do students save?", "How do I get the "
           "student code?"],
     "a": ["Yes: students get 15% off any kettle after a quick verification at kettlebird.example/students. "
           "The code works once per year.",
           "Students save 15%. Verify at kettlebird.example/students and you'll get a code valid for one "
           "order per year."]},
    {"w": 3,
     "q": ["How do Steam Points work?", "What are Steam Points?", "How many Steam Points do I have?",
           "Do my Steam Points expire?", "How do I earn Steam Points?", "Can I spend my Steam Points?",
           "Tell me about your loyalty programme."],
     "a": ["Steam Points are our loyalty points: you earn 1 point per $1 spent, and every 100 points is $5 "
           "off. Points expire 12 months after you earn them; your balance is on the Account page.",
           "You collect 1 Steam Point per dollar, and 100 points take $5 off your next order. They last 12 "
           "months, and the Account page shows your balance."]},
    {"w": 3,
     "q": ["Do you price match?", "The {model} got cheaper after I bought it.", "Price dropped a week "
           "after my order {order}.", "Do you refund price differences?", "Is there a price guarantee?",
           "I saw the {model} on sale a few days after buying it."],
     "a": ["If we lower the price within 14 days of your purchase, we refund the difference. Reply with your "
           "order number and we'll do it right away.",
           "Yes, within 14 days: if the price drops after you buy, send us the order number and we'll refund "
           "the difference."]},
    {"q": ["Do you offer bulk discounts?", "I need 20 kettles for our office.", "Business orders?",
           "Can I buy {model}s for my hotel?"],
     "a": ["Orders of 10 or more kettles get 10% off. Write to business@kettlebird.example with the model "
           "and quantity and we'll send an invoice quote within one business day.",
           "For 10+ units we give 10% off. Email business@kettlebird.example with what you need and you'll "
           "have a quote within one business day."]},
    {"q": ["Do you sell gift cards?", "Can I buy a Kettlebird gift card?", "Do gift cards expire?"],
     "a": ["Gift cards come in $25, $50 and $100 and never expire. They're delivered by email and can be "
           "used on kettles and parts.",
           "Yes: $25, $50 or $100, sent by email, with no expiry date."]},
    {"w": 3,
     "q": ["When is support open?", "How can I contact Kettlebird?", "Is there a phone number?",
           "What's your support email?", "What are your opening hours?", "Is live chat open on Sundays?",
           "How quickly do you answer emails?"],
     "a": ["Live chat is open Monday to Saturday, 8:00–20:00 CET. You can also email care@kettlebird.example "
           "any time and we reply within 24 hours.",
           "Reach us by live chat Monday to Saturday from 8:00 to 20:00 CET, or by email at "
           "care@kettlebird.example, answered within 24 hours."]},
    {"q": ["Is the {model} loud?", "How noisy is the kettle?", "Does the Pro have a quiet mode?"],
     "a": ["The Kettlebird Pro has Quiet Boil, which heats a little slower at 48 dB, about as loud as a "
           "quiet library. The One and Mini boil at normal kettle volume.",
           "If noise matters, the Pro's Quiet Boil mode runs at 48 dB. The One and the Mini don't have a quiet "
           "mode."]},
    {"q": ["Is the kettle BPA free?", "What is the inside of the kettle made of?", "Does water touch "
           "plastic in the {model}?"],
     "a": ["The inside is 304 stainless steel and the lid is BPA-free. Water only touches steel while it "
           "boils.",
           "All Kettlebird kettles have a 304 stainless steel interior and a BPA-free lid, so boiling water "
           "touches only steel."]},
    {"q": ["How long does the {model} take to boil?", "How fast does it boil?", "What's the wattage of the "
           "{model}?"],
     "a": ["The {model} is {watts} and takes {boil}.",
           "At {watts}, the {model} needs {boil}.",
           "The One and the Pro run at 2200 W and boil a full 1.7 L in about 4 minutes; the Mini, at 1500 W, "
           "boils its 0.8 L in about 2.5 minutes."]},
    {"q": ["Does the kettle switch off by itself?", "Is there auto shut-off?", "What if I forget the kettle "
           "on?"],
     "a": ["Yes: every Kettlebird switches off at the boil (or at your set temperature), when lifted off "
           "the base, and if it runs dry.",
           "Automatic shut-off is built in: at the target temperature, when you lift it off the base, and "
           "with boil-dry protection."]},
    {"q": ["My kettle arrived damaged.", "The {model} came with a cracked lid.", "Order {order} arrived "
           "broken."],
     "tone": "sorry",
     "a": ["Send a photo of the damage and your order number within 7 days of delivery, "
           "and we'll ship a replacement by express at no cost. No need to return the damaged one.",
           "That shouldn't happen. Within 7 days of delivery, reply with a photo and order {order}; we'll "
           "express-ship a replacement for free, and you can keep or recycle the damaged one."]},
    {"q": ["I got the wrong item.", "Something is missing from order {order}.", "The filter wasn't in the "
           "box."],
     "tone": "sorry",
     "a": ["Reply with order {order} and a photo of what arrived, and we'll send the "
           "right item by express within 2 business days, with a free return label for the wrong one.",
           "Let's fix that. Send the order number and a photo of the contents; we dispatch the missing or "
           "correct item by express within 2 business days."]},
    {"q": ["How do I get an invoice?", "I need a VAT receipt for {order}.", "Can I download my invoice?"],
     "a": ["Open kettlebird.example/orders, pick the order and click 'Download invoice' to get a PDF with "
           "VAT shown.",
           "Invoices are on the Orders page: choose order {order} and 'Download invoice' for a PDF including "
           "VAT."]},
    {"q": ["How do I delete my account?", "Please remove my data.", "Close my Kettlebird account."],
     "a": ["Go to Account > Settings > Privacy and choose 'Delete account'. You have 30 days to change your "
           "mind; after that your data is erased for good.",
           "Under Account > Settings > Privacy, pick 'Delete account'. There's a 30-day grace period, then "
           "everything is permanently deleted."]},
    {"q": ["How do I stop your emails?", "Unsubscribe me from the newsletter.", "Too many marketing emails."],
     "a": ["Click 'Unsubscribe' at the bottom of any newsletter, or switch off marketing emails under Account "
           "> Settings > Notifications. Order and shipping emails keep coming.",
           "Use the 'Unsubscribe' link in any newsletter or Account > Settings > Notifications. You'll still "
           "get order updates."]},
    {"w": 3,
     "q": ["When will I get my refund?", "Where is my refund for {order}?", "I returned my kettle last week, "
           "no refund yet.", "How long do refunds take?", "My return arrived at your warehouse, when do "
           "I get paid back?"],
     "a": ["We refund within 5 business days of receiving your return, to the original payment method. Banks "
           "then take 3–7 days to show it. If it's longer, reply with order {order} and we'll check.",
           "Refunds go out within 5 business days after your return arrives, to the card or account you paid "
           "with; allow 3–7 more days for your bank."]},
    {"q": ["What can I do with my old kettle?", "Do you recycle kettles?", "Can I trade in my old kettle?"],
     "a": ["Through Kettlebird ReCycle you can send us any old kettle, any brand, with a free label: we "
           "recycle it and add 200 Steam Points ($10) to your account.",
           "Yes! Kettlebird ReCycle takes back any kettle with a free shipping label and gives you 200 Steam "
           "Points, worth $10."]},
    {"q": ["My new kettle smells of plastic.", "Water tastes funny from the new {model}.", "Strange smell "
           "the first time I boiled."],
     "tone": "sorry",
     "a": ["A slight smell is normal at first. Boil a full kettle and pour it away two or three times and it "
           "will go. If it lasts beyond a week, contact us and we'll replace it.",
           "That first-use smell fades after two or three full boils that you pour away. Still there after a "
           "week? We'll swap the kettle."]},
    {"q": ["Does the Pro have a child lock?", "How do I turn on the child lock?", "Can kids switch the "
           "kettle on?"],
     "a": ["The Kettlebird Pro has a child lock: hold + and – together for 3 seconds and a lock icon appears. "
           "Do the same to unlock. The One and Mini don't have one.",
           "On the Pro, press + and – together for 3 seconds to lock (a padlock shows), and again to unlock. "
           "The One and Mini have no child lock."]},
    {"q": ["The {model} is out of stock.", "When will the {model} be back in stock?", "Can I get notified "
           "when it's available?"],
     "a": ["Restocks usually land within a few days. Click 'Notify me' on the product page and we'll email you "
           "the moment it's back.",
           "We restock often, usually within days. Hit 'Notify me' on the {model} page for an email when it "
           "returns."]},
]

COUNTRIES = {
    "Germany": "EU orders arrive with all duties and VAT paid.",
    "France": "EU orders arrive with all duties and VAT paid.",
    "Spain": "EU orders arrive with all duties and VAT paid.",
    "the UK": "UK orders include duties and VAT, so there is nothing to pay on delivery.",
    "the US": "For the US we ship the 120 V model, duties included.",
    "Canada": "Canadian customs may charge import duties on delivery; those are not included.",
    "Norway": "Norwegian customs may charge VAT on delivery; it is not included in our price.",
}
TEAS = {"green tea": 80, "white tea": 70, "oolong": 90, "black tea": 100, "coffee": 90, "herbal tea": 100}


SORRY = ["Sorry about that!", "Sorry for the trouble!", "Oh no, sorry to hear that.", "Apologies for the hassle!"]
# An answer may use a placeholder only if the question names it (directly or through the model/country/tea).
ROOT = {"warranty": "model", "capacity": "model", "keep_warm": "model", "boil": "model", "watts": "model",
        "price": "model", "duties": "country", "temp": "tea"}


def make(rng: random.Random, count: int = 400) -> list[dict[str, str]]:
    """`count` unique prompt/completion rows, spread over the intents by their weight `w` (default 1)."""
    schedule = [intent for intent in INTENTS for _ in range(intent.get("w", 1))]
    rows: list[dict[str, str]] = []
    seen: set[str] = set()
    distinct = Distinct()
    tries = 0
    while len(rows) < count:
        intent = schedule[len(rows) % len(schedule)]  # the next row's intent, retried until a row is kept
        tries += 1
        assert tries < 100 * count, "cannot find enough distinct rows"
        row = _row(rng, intent)
        key = " ".join(row["prompt"].lower().split())
        if key in seen:
            continue
        seen.add(key)
        chat = [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["completion"]}]
        if distinct.add(chat):
            rows.append(row)
    return rows


def _row(rng: random.Random, intent: dict) -> dict[str, str]:
    slots = _slots(rng)
    question = rng.choice(intent["q"])
    prefix, text = rng.choice(PREFIXES), question.format(**slots)
    if prefix.endswith(", ") and text[1].islower():
        text = text[0].lower() + text[1:]
    prompt = prefix + text
    answers = [a for a in intent["a"] if _names(a) <= _names(question)]
    assert answers, f"no answer fits {question!r}"
    openers = SORRY if intent.get("tone") == "sorry" else OPENERS
    if not prompt.endswith("?"):  # a request or a complaint is not a question to praise
        openers = [o for o in openers if "ask" not in o and "question" not in o]
    body = rng.choice(answers).format(**slots)
    return {"prompt": prompt, "completion": f"{rng.choice(openers)} {body} {SIGN_OFF}"}


def _names(template: str) -> set[str]:
    return {ROOT.get(n, n) for n in re.findall(r"{(\w+)}", template)}


def _slots(rng: random.Random) -> dict[str, str]:
    model = rng.choice(sorted(MODELS))
    country = rng.choice(sorted(COUNTRIES))
    tea = rng.choice(sorted(TEAS))
    return {"model": model, **MODELS[model], "order": _order(rng), "country": country,
            "duties": COUNTRIES[country], "tea": tea, "temp": str(TEAS[tea])}


# Held-out questions (support_questions.jsonl): reworded, so none is a near copy of a training prompt, each
# with the fact(s) a right answer states; a list inside `facts` holds alternatives (any one counts).
QUESTIONS: list[tuple[str, list, str]] = [
    ("How do I return a kettle?", ["45 days"],
     "You can return any Kettlebird within 45 days of delivery: start the return on the Orders page."),
    ("I bought a kettle five weeks ago and I don't like it. Is it too late to get my money back?", ["45 days"],
     "Not too late: returns are accepted for 45 days from delivery, used or not."),
    ("What's the deadline for sending a Kettlebird back?", ["45 days"],
     "Our return window is 45 days from delivery."),
    ("For how long is the Kettlebird One guaranteed?", ["2 years"],
     "The Kettlebird One is covered for 2 years from delivery."),
    ("What guarantee comes with the Kettlebird Pro?", ["3 years"],
     "The Kettlebird Pro has a warranty of 3 years from the delivery date."),
    ("My Kettlebird Mini broke after 18 months. Will you replace it?", ["2 years"],
     "Yes: the Kettlebird Mini is covered for 2 years, so claim at kettlebird.example/warranty."),
    ("How often do I need to get rid of limescale if my tap water is hard?", ["4 weeks"],
     "Descale every 4 weeks in hard water areas and every 8 weeks in soft water."),
    ("What can I clean the scale out with, if not vinegar?", [["citric acid", "ClearFlow"]],
     "Use one ClearFlow sachet or 2 tablespoons of citric acid, and run the descale program."),
    ("What's the minimum spend for free delivery?", ["$39"],
     "Shipping is free on orders over $39."),
    ("What's the price of your quickest delivery option?", ["$9.50"],
     "Express is $9.50 and arrives in 1–2 business days."),
    ("At what times can I talk to someone on live chat?", ["8:00", "20:00"],
     "Live chat is open Monday to Saturday, 8:00–20:00 CET."),
    ("My kettle's screen says E1. What did I do wrong?", [["0.5 L", "MIN line"]],
     "E1 means there was too little water: fill above the MIN line (0.5 L on the One and Pro)."),
    ("The kettle cut out and shows code E4. What causes that?", ["limescale"],
     "E4 is overheat protection, almost always caused by limescale: let it cool, then descale it."),
    ("I ordered an hour ago by mistake. Can I still call the order off?", ["2 hours"],
     "Yes: orders can be cancelled on the Orders page for 2 hours after you place them."),
    ("The price went down right after I bought mine. Can I get the difference back?", ["14 days"],
     "If we lower the price within 14 days of your purchase, we refund the difference."),
    ("Is there a discount if I'm at university?", ["15%"],
     "Students get 15% off any kettle after verifying at kettlebird.example/students."),
    ("What are 100 Steam Points worth?", ["$5 off"],
     "Every 100 Steam Points is $5 off your next order."),
    ("How long before my Steam Points run out?", ["12 months"],
     "Steam Points expire 12 months after you earn them."),
    ("My green tea always tastes bitter. Which setting should I use?", ["80"],
     "Brew green tea at 80 °C: the 80 °C preset on the One, or set 80 exactly on the Pro."),
    ("How long will the Pro hold my water at temperature?", ["60 minutes"],
     "The Kettlebird Pro keeps water warm for 60 minutes."),
    ("How much water fits in the Mini?", ["0.8 L"],
     "The Kettlebird Mini holds 0.8 L."),
    ("How soon after you receive my return is the money refunded?", ["5 business days"],
     "We refund within 5 business days of receiving your return."),
    ("What does the cheapest Kettlebird cost?", ["$59"],
     "The Kettlebird Mini is our cheapest kettle, at $59."),
    ("What would a Kettlebird Pro set me back?", ["$149"],
     "The Kettlebird Pro costs $149."),
]


def questions() -> list[dict]:
    """The held-out questions as prompt/completion rows with their `facts` (reference: an answer in the
    data's voice, for the loss and overlap scores)."""
    return [{"prompt": q, "completion": f"{answer} {SIGN_OFF}", "facts": facts} for q, facts, answer in QUESTIONS]

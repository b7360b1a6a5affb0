"""Our Baichuan2 code (Baichuan2-7B/): loading, registration, code install; the tiny demo model."""
